"""EXAONE 4 cases: full attention everywhere (no sliding window) with MHA, GQA and tied, llama3
rope scaling; every layer sliding; hybrid attention (sliding layers with rotary, full-attention
layers without: NoPE) from `sliding_window_pattern` and from explicit `layer_types`."""

from typing import Any

from transformers import Exaone4Config, Exaone4ForCausalLM

from tests.families.parity import Case

FULL = ["full_attention", "full_attention"]


def _config(**overrides: Any) -> Exaone4Config:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=8,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        sliding_window=None,
        layer_types=FULL,  # transformers cannot derive them without a sliding window
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    return Exaone4Config(**settings)


CASES = {
    "full-mha-untied": Case(Exaone4ForCausalLM, _config()),
    "full-gqa-tied": Case(
        Exaone4ForCausalLM, _config(num_key_value_heads=2, tie_word_embeddings=True)
    ),
    "full-mqa-llama3-rope": Case(
        Exaone4ForCausalLM,
        _config(
            num_key_value_heads=1,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 1000000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
    ),
    "all-sliding-gqa": Case(
        Exaone4ForCausalLM,
        _config(
            sliding_window=4, layer_types=None, sliding_window_pattern=3, num_key_value_heads=2
        ),
    ),
    "hybrid-pattern-nope": Case(
        Exaone4ForCausalLM,
        _config(
            num_hidden_layers=4,
            sliding_window=4,
            layer_types=None,
            sliding_window_pattern=2,
            num_key_value_heads=2,
        ),
    ),
    "hybrid-layer-types-nope": Case(
        Exaone4ForCausalLM,
        _config(
            num_hidden_layers=3,
            sliding_window=5,
            layer_types=["full_attention", "sliding_attention", "full_attention"],
        ),
    ),
}
