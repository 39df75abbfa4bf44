"""OLMo 2 cases: post-norms only, QK norms over all heads."""

from typing import Any

from transformers import Olmo2Config, Olmo2ForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> Olmo2Config:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    settings.update(overrides)
    return Olmo2Config(**settings)


CASES = {
    "mha": Case(Olmo2ForCausalLM, _config()),
    "gqa-tied": Case(Olmo2ForCausalLM, _config(num_key_value_heads=2, tie_word_embeddings=True)),
}
