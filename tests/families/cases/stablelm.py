"""StableLM cases: sequential and parallel blocks (one shared LayerNorm whose bias folds into the
gated MLP), quarter and half partial rotary, q/k/v biases, GQA, tied embeddings, linear rope
scaling, theta and rotary fraction given as top-level keyword arguments, and per-head QK
LayerNorms (StableLM 2 12B) in sequential and parallel GQA blocks."""

from typing import Any

from transformers import StableLmConfig, StableLmForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> StableLmConfig:
    settings: dict[str, Any] = dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
    )
    settings.update(overrides)
    return StableLmConfig(**settings)


CASES = {
    "sequential-quarter-rotary": Case(StableLmForCausalLM, _config()),
    "parallel-qkv-bias": Case(
        StableLmForCausalLM, _config(use_parallel_residual=True, use_qkv_bias=True)
    ),
    "gqa-half-rotary-tied": Case(
        StableLmForCausalLM,
        _config(
            num_key_value_heads=2,
            tie_word_embeddings=True,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": 500.0,
                "partial_rotary_factor": 0.5,
            },
        ),
    ),
    "parallel-gqa-linear-rope": Case(
        StableLmForCausalLM,
        _config(
            use_parallel_residual=True,
            num_key_value_heads=1,
            hidden_act="gelu",
            rope_parameters={
                "rope_type": "linear",
                "factor": 2.0,
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.25,
            },
        ),
    ),
    "theta-fraction-kwargs": Case(
        StableLmForCausalLM, _config(rope_theta=1000.0, partial_rotary_factor=0.5)
    ),
    "qk-layernorm": Case(StableLmForCausalLM, _config(qk_layernorm=True)),
    "qk-layernorm-parallel-gqa": Case(
        StableLmForCausalLM,
        _config(
            qk_layernorm=True, use_parallel_residual=True, num_key_value_heads=2, use_qkv_bias=True
        ),
    ),
}
