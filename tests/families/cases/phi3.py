"""Phi-3 cases: fused projections, partial rotary, GQA, sliding window."""

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


CASES = {
    "mha": Case(Phi3ForCausalLM, _config()),
    "gqa-partial-rotary": Case(
        Phi3ForCausalLM, _config(num_key_value_heads=2, partial_rotary_factor=0.5)
    ),
    "sliding-window": Case(Phi3ForCausalLM, _config(sliding_window=4)),
}
