"""Gemma 2 cases: four norms per block, soft caps, alternating sliding windows."""

from typing import Any

from transformers import Gemma2Config, Gemma2ForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> Gemma2Config:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        sliding_window=4,
        query_pre_attn_scalar=24,
        attn_logit_softcapping=2.0,
        final_logit_softcapping=3.0,
    )
    settings.update(overrides)
    return Gemma2Config(**settings)


CASES = {
    "soft-capped-windowed": Case(Gemma2ForCausalLM, _config()),
    "no-caps-untied": Case(
        Gemma2ForCausalLM,
        _config(
            attn_logit_softcapping=None, final_logit_softcapping=None, tie_word_embeddings=False
        ),
    ),
}
