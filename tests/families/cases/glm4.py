"""GLM-4-0414 cases (norms on the attention and MLP outputs too): half rotary with adjacent
pairs (the default), full rotary, no biases, tied."""

from typing import Any

from transformers import Glm4Config, Glm4ForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> Glm4Config:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        tie_word_embeddings=False,
        pad_token_id=0,
    )
    settings.update(overrides)
    return Glm4Config(**settings)


CASES = {
    "half-rotary-gqa-biases": Case(Glm4ForCausalLM, _config()),
    "full-rotary-mha": Case(
        Glm4ForCausalLM,
        _config(
            num_key_value_heads=4,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 1000.0,
                "partial_rotary_factor": 1.0,
            },
        ),
    ),
    "no-bias-mqa-tied": Case(
        Glm4ForCausalLM,
        _config(attention_bias=False, num_key_value_heads=1, tie_word_embeddings=True),
    ),
    "wide-heads-linear-rope": Case(
        Glm4ForCausalLM,
        _config(
            head_dim=16,
            rope_parameters={
                "rope_type": "linear",
                "factor": 2.0,
                "rope_theta": 1000.0,
                "partial_rotary_factor": 0.5,
            },
        ),
    ),
}
