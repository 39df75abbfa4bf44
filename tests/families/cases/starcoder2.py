"""StarCoder2 cases: GQA with a sliding window of 4, no biases, MHA untied, linear rope."""

from typing import Any

from transformers import Starcoder2Config, Starcoder2ForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> Starcoder2Config:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        sliding_window=4,
        bos_token_id=0,
        eos_token_id=0,
    )
    settings.update(overrides)
    return Starcoder2Config(**settings)


CASES = {
    "gqa-sliding-tied": Case(Starcoder2ForCausalLM, _config()),
    "gqa-no-bias": Case(Starcoder2ForCausalLM, _config(use_bias=False)),
    "mha-full-untied": Case(
        Starcoder2ForCausalLM,
        _config(num_key_value_heads=4, sliding_window=None, tie_word_embeddings=False),
    ),
    "mqa-linear-rope": Case(
        Starcoder2ForCausalLM,
        _config(
            num_key_value_heads=1,
            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 100000.0},
        ),
    ),
}
