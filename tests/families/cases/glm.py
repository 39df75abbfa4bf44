"""GLM cases: half rotary with adjacent pairs (the default), full rotary, no biases, tied.

`glm_cases` is shared with GLM-4, whose checkpoints differ only by the extra output norms."""

from typing import Any

from transformers import GlmConfig, GlmForCausalLM

from tests.families.parity import Case


def glm_cases(config_class: Any, model_class: Any) -> dict[str, Case]:
    def config(**overrides: Any) -> Any:
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
        return config_class(**settings)

    def rope(kind: str, partial: float, **extra: float) -> dict[str, Any]:
        return {"rope_type": kind, "rope_theta": 1000.0, "partial_rotary_factor": partial, **extra}

    return {
        "half-rotary-gqa-biases": Case(model_class, config()),
        "full-rotary-mha": Case(
            model_class, config(num_key_value_heads=4, rope_parameters=rope("default", 1.0))
        ),
        "no-bias-mqa-tied": Case(
            model_class,
            config(attention_bias=False, num_key_value_heads=1, tie_word_embeddings=True),
        ),
        "wide-heads-linear-rope": Case(
            model_class,
            config(head_dim=16, rope_parameters=rope("linear", 0.5, factor=2.0)),
        ),
    }


CASES = glm_cases(GlmConfig, GlmForCausalLM)
