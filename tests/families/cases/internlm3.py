"""InternLM3 cases: transformers' InternLM3Config on its Llama implementation, saved under the
checkpoints' own class name: GQA (the default), biases everywhere, MQA tied."""

from typing import Any

from transformers import InternLM3Config, LlamaForCausalLM

from tests.families.parity import Case


class InternLM3ForCausalLM(LlamaForCausalLM):
    """LlamaForCausalLM under the name InternLM3 checkpoints give in `architectures`."""


def _config(**overrides: Any) -> InternLM3Config:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    return InternLM3Config(**settings)


CASES = {
    "gqa-untied": Case(InternLM3ForCausalLM, _config()),
    "biases-wide-heads": Case(InternLM3ForCausalLM, _config(head_dim=16, qkv_bias=True, bias=True)),
    "mqa-tied-linear-rope": Case(
        InternLM3ForCausalLM,
        _config(
            num_key_value_heads=1,
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0},
        ),
    ),
}
