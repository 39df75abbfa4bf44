"""Phi cases: Phi-2-like partial rotary (MHA, untied), GQA, tied embeddings with full rotary,
a custom rope base, a head width other than d_model / n_heads, and QK LayerNorms (weight and
bias, shared by the heads) with MHA and GQA."""

from typing import Any

from transformers import PhiConfig, PhiForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> PhiConfig:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
    )
    settings.update(overrides)
    return PhiConfig(**settings)


CASES = {
    "phi2-like": Case(PhiForCausalLM, _config()),
    "gqa-rope-base": Case(
        PhiForCausalLM, _config(num_key_value_heads=2, partial_rotary_factor=0.25, rope_theta=500.0)
    ),
    "tied-full-rotary": Case(
        PhiForCausalLM, _config(tie_word_embeddings=True, partial_rotary_factor=1.0)
    ),
    "head-dim": Case(PhiForCausalLM, _config(head_dim=16, hidden_act="gelu")),
    "qk-layernorm": Case(PhiForCausalLM, _config(qk_layernorm=True)),
    "qk-layernorm-gqa": Case(
        PhiForCausalLM, _config(qk_layernorm=True, num_key_value_heads=2, partial_rotary_factor=1.0)
    ),
}
