"""GPT-J cases: partial and full rotary (adjacent pairs), tied embeddings (the output bias stays),
and a custom MLP width and activation."""

from typing import Any

from transformers import GPTJConfig, GPTJForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> GPTJConfig:
    settings: dict[str, Any] = dict(
        n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=101, rotary_dim=4
    )
    settings.update(overrides)
    return GPTJConfig(**settings)


CASES = {
    "partial-rotary": Case(GPTJForCausalLM, _config()),
    "full-rotary": Case(GPTJForCausalLM, _config(rotary_dim=8)),
    "tied-gelu-inner": Case(
        GPTJForCausalLM,
        _config(tie_word_embeddings=True, n_inner=48, activation_function="gelu", rotary_dim=6),
    ),
}
