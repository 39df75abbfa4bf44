"""Helium cases: adjacent-pair rotary with MHA, GQA + biases, MQA tied, linear rope scaling."""

from typing import Any

from transformers import HeliumConfig, HeliumForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> HeliumConfig:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=8,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    return HeliumConfig(**settings)


CASES = {
    "mha-untied": Case(HeliumForCausalLM, _config()),
    "gqa-biases": Case(
        HeliumForCausalLM, _config(num_key_value_heads=2, attention_bias=True, mlp_bias=True)
    ),
    "mqa-tied": Case(HeliumForCausalLM, _config(num_key_value_heads=1, tie_word_embeddings=True)),
    "linear-rope": Case(
        HeliumForCausalLM,
        _config(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0}),
    ),
}
