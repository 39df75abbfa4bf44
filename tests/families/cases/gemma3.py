"""Gemma 3 text cases: QK norms, local/global rope bases, sliding windows."""

from typing import Any

from transformers import Gemma3ForCausalLM, Gemma3TextConfig

from tests.families.parity import Case


def _config(**overrides: Any) -> Gemma3TextConfig:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=1,
        head_dim=16,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        sliding_window=4,
        query_pre_attn_scalar=16,
        layer_types=["sliding_attention", "sliding_attention", "full_attention"],
    )
    settings.update(overrides)
    return Gemma3TextConfig(**settings)


CASES = {
    "local-global": Case(Gemma3ForCausalLM, _config()),
    "global-linear-rope": Case(
        Gemma3ForCausalLM,
        _config(
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
            },
        ),
    ),
}
