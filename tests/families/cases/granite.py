"""Granite cases: the four multipliers (embedding, attention, residual, logits) with GQA and tied
embeddings (W_U takes the logits scaling from the tied copy), untied MHA, attention and MLP
biases (the gate bias too), and linear rope scaling."""

from typing import Any

from transformers import GraniteConfig, GraniteForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> GraniteConfig:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        embedding_multiplier=12.0,
        attention_multiplier=0.0078125 * 16,
        residual_multiplier=0.22,
        logits_scaling=8.0,
    )
    settings.update(overrides)
    return GraniteConfig(**settings)


CASES = {
    "gqa-tied-multipliers": Case(GraniteForCausalLM, _config()),
    "mha-untied": Case(
        GraniteForCausalLM,
        _config(num_key_value_heads=4, tie_word_embeddings=False, logits_scaling=2.5),
    ),
    "biases-linear-rope": Case(
        GraniteForCausalLM,
        _config(
            attention_bias=True,
            mlp_bias=True,
            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 5000.0},
        ),
    ),
    "defaults-mqa": Case(
        GraniteForCausalLM,
        _config(
            num_key_value_heads=1,
            embedding_multiplier=1.0,
            attention_multiplier=1.0,
            residual_multiplier=1.0,
            logits_scaling=1.0,
        ),
    ),
}
