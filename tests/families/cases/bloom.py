"""BLOOM cases: ALiBi with power-of-two and other head counts."""

from typing import Any

from transformers import BloomConfig, BloomForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> BloomConfig:
    settings: dict[str, Any] = dict(hidden_size=32, n_layer=2, n_head=4, vocab_size=101)
    settings.update(overrides)
    return BloomConfig(**settings)


CASES = {
    "four-heads": Case(BloomForCausalLM, _config(), hf_pads_with_position_ids=False),
    "six-heads-untied": Case(
        BloomForCausalLM,
        _config(hidden_size=48, n_head=6, tie_word_embeddings=False),
        hf_pads_with_position_ids=False,
    ),
}
