"""Mistral cases: sliding window (every layer) with MHA and GQA, full attention, tied, rope scaling."""

from typing import Any

from transformers import MistralConfig, MistralForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> MistralConfig:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        sliding_window=4,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    return MistralConfig(**settings)


CASES = {
    "window-mha-untied": Case(MistralForCausalLM, _config()),
    "window-gqa": Case(MistralForCausalLM, _config(num_key_value_heads=2)),
    "full-attention-mqa-tied": Case(
        MistralForCausalLM,
        _config(sliding_window=None, num_key_value_heads=1, tie_word_embeddings=True),
    ),
    "head-dim-linear-rope": Case(
        MistralForCausalLM,
        _config(
            head_dim=16,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0},
        ),
    ),
}
