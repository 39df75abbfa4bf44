"""Phi-3 cases: fused projections, partial rotary, GQA, sliding window, LongRoPE."""

from typing import Any

from transformers import Phi3Config, Phi3ForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> Phi3Config:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    settings.update(overrides)
    return Phi3Config(**settings)


def _longrope(original: int, partial: float = 1.0) -> dict[str, Any]:
    """LongRoPE parameters for a 32-wide model with 4 heads (one factor per frequency)."""
    n = int(8 * partial) // 2
    return dict(
        original_max_position_embeddings=original,
        rope_parameters={
            "rope_type": "longrope",
            "short_factor": [1.0 + 0.1 * i for i in range(n)],
            "long_factor": [1.0 + 1.5 * i for i in range(n)],
            "partial_rotary_factor": partial,
        },
    )


CASES = {
    "mha": Case(Phi3ForCausalLM, _config()),
    "gqa-partial-rotary": Case(
        Phi3ForCausalLM, _config(num_key_value_heads=2, partial_rotary_factor=0.5)
    ),
    "sliding-window": Case(Phi3ForCausalLM, _config(sliding_window=4)),
    # 12 tokens > original_max_position_embeddings=8: the long factors; the padded batch's
    # shorter rows take them too (HF picks by the batch's longest row).
    "longrope-long-factors": Case(
        Phi3ForCausalLM, _config(**_longrope(8)), rope_follows_longest_row=True
    ),
    # Every padded row (5, 9 and 12 tokens) is past 4: each also matches itself alone.
    "longrope-long-factors-partial-rotary-gqa": Case(
        Phi3ForCausalLM, _config(num_key_value_heads=2, **_longrope(4, partial=0.5))
    ),
    "longrope-short-factors": Case(Phi3ForCausalLM, _config(**_longrope(16))),
}
