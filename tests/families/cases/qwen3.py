"""Qwen3 cases: q/k norms with MHA/GQA, a head_dim other than d_model / heads, biases, tied,
sliding windows."""

from typing import Any

from transformers import Qwen3Config, Qwen3ForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> Qwen3Config:
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
    return Qwen3Config(**settings)


CASES = {
    "mha-untied": Case(Qwen3ForCausalLM, _config()),
    "gqa-tied-wide-heads": Case(
        Qwen3ForCausalLM, _config(num_key_value_heads=2, head_dim=16, tie_word_embeddings=True)
    ),
    "attention-bias": Case(Qwen3ForCausalLM, _config(attention_bias=True, num_key_value_heads=2)),
    "window-from-max-window-layers": Case(
        Qwen3ForCausalLM,
        _config(use_sliding_window=True, sliding_window=4, max_window_layers=1),
    ),
    "window-layer-types": Case(
        Qwen3ForCausalLM,
        _config(
            use_sliding_window=True,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention"],
            num_key_value_heads=1,
        ),
    ),
}
