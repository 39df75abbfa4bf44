"""Qwen2 cases: qkv biases with MHA/GQA, tied, sliding windows by max_window_layers and layer_types."""

from typing import Any

from transformers import Qwen2Config, Qwen2ForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> Qwen2Config:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    return Qwen2Config(**settings)


CASES = {
    "mha-untied": Case(Qwen2ForCausalLM, _config()),
    "gqa-tied": Case(Qwen2ForCausalLM, _config(num_key_value_heads=2, tie_word_embeddings=True)),
    "window-from-max-window-layers": Case(
        Qwen2ForCausalLM,
        _config(use_sliding_window=True, sliding_window=4, max_window_layers=1),
    ),
    "window-all-layers-gqa": Case(
        Qwen2ForCausalLM,
        _config(
            use_sliding_window=True, sliding_window=4, max_window_layers=0, num_key_value_heads=2
        ),
    ),
    "window-layer-types": Case(
        Qwen2ForCausalLM,
        _config(
            use_sliding_window=True,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention"],
        ),
    ),
    "yarn-rope": Case(
        Qwen2ForCausalLM,
        _config(
            num_key_value_heads=2,
            rope_parameters={
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 16,
                "rope_theta": 1000000.0,
            },
        ),
    ),
    "window-unused-linear-rope": Case(
        Qwen2ForCausalLM,
        _config(
            use_sliding_window=False,
            sliding_window=4,
            max_window_layers=0,
            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1000000.0},
        ),
    ),
}
