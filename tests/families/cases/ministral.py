"""Ministral cases: sliding window in every layer, mixed sliding/full layers, every layer full.

(transformers requires `sliding_window` to be set for this class, even with no sliding layers.)
"""

from typing import Any

from transformers import MinistralConfig, MinistralForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> MinistralConfig:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=8,  # MinistralAttention needs it set
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        sliding_window=4,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    return MinistralConfig(**settings)


CASES = {
    "window-all-layers-mha": Case(MinistralForCausalLM, _config()),
    "mixed-layers-gqa": Case(
        MinistralForCausalLM,
        _config(num_key_value_heads=2, layer_types=["full_attention", "sliding_attention"]),
    ),
    "full-attention-mqa-tied": Case(
        MinistralForCausalLM,
        _config(
            layer_types=["full_attention"] * 2, num_key_value_heads=1, tie_word_embeddings=True
        ),
    ),
    "head-dim-linear-rope": Case(
        MinistralForCausalLM,
        _config(
            head_dim=16,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0},
        ),
    ),
}
