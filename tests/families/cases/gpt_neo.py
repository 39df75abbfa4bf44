"""GPT-Neo cases: global/local alternation with a window of 4, all-local, untied, relu MLP."""

from typing import Any

from transformers import GPTNeoConfig, GPTNeoForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> GPTNeoConfig:
    settings: dict[str, Any] = dict(
        num_layers=2,
        hidden_size=32,
        num_heads=4,
        max_position_embeddings=64,
        vocab_size=101,
        intermediate_size=48,
        attention_types=[[["global", "local"], 1]],
        window_size=4,
    )
    settings.update(overrides)
    return GPTNeoConfig(**settings)


CASES = {
    "global-local": Case(GPTNeoForCausalLM, _config()),
    "local-global-untied": Case(
        GPTNeoForCausalLM,
        _config(attention_types=[[["local", "global"], 1]], tie_word_embeddings=False),
    ),
    "all-local-relu": Case(
        GPTNeoForCausalLM,
        _config(attention_types=[[["local"], 2]], activation_function="relu", window_size=3),
    ),
}
