"""OLMo cases: MHA, GQA with attention biases, tied MQA, linear rope scaling."""

from typing import Any

from transformers import OlmoConfig, OlmoForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> OlmoConfig:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=1,
    )
    settings.update(overrides)
    return OlmoConfig(**settings)


CASES = {
    "mha-untied": Case(OlmoForCausalLM, _config()),
    "gqa-biases": Case(OlmoForCausalLM, _config(num_key_value_heads=2, attention_bias=True)),
    "mqa-tied": Case(OlmoForCausalLM, _config(num_key_value_heads=1, tie_word_embeddings=True)),
    "linear-rope": Case(
        OlmoForCausalLM,
        _config(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500000.0}),
    ),
}
