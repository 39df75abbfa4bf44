"""Gemma 1 cases: tied with a head_dim other than d_model / heads, untied GQA, MQA, attention
biases with linear rope scaling."""

from typing import Any

from transformers import GemmaConfig, GemmaForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> GemmaConfig:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=16,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
    )
    settings.update(overrides)
    return GemmaConfig(**settings)


CASES = {
    "mha-tied": Case(GemmaForCausalLM, _config()),
    "gqa-untied": Case(
        GemmaForCausalLM, _config(num_key_value_heads=2, head_dim=8, tie_word_embeddings=False)
    ),
    "mqa": Case(GemmaForCausalLM, _config(num_key_value_heads=1)),
    "attention-bias-linear-rope": Case(
        GemmaForCausalLM,
        _config(
            attention_bias=True,
            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0},
        ),
    ),
}
