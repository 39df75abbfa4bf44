"""Llama cases: MHA, GQA, MQA with tied embeddings, rope scaling (llama3, linear, yarn, dynamic),
biases."""

from typing import Any

from transformers import LlamaConfig, LlamaForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> LlamaConfig:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    return LlamaConfig(**settings)


LLAMA3_SCALING = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 16,
}

CASES = {
    "mha-untied": Case(LlamaForCausalLM, _config()),
    "gqa": Case(LlamaForCausalLM, _config(num_key_value_heads=2)),
    "mqa-tied": Case(LlamaForCausalLM, _config(num_key_value_heads=1, tie_word_embeddings=True)),
    "llama3-rope-scaling": Case(
        LlamaForCausalLM,
        _config(num_key_value_heads=2, rope_scaling=LLAMA3_SCALING, rope_theta=500000.0),
    ),
    "linear-rope": Case(
        LlamaForCausalLM, _config(rope_scaling={"rope_type": "linear", "factor": 2.0})
    ),
    "yarn-rope": Case(
        LlamaForCausalLM,
        _config(
            rope_scaling={
                "rope_type": "yarn",
                "factor": 4.0,
                "original_max_position_embeddings": 16,
            }
        ),
    ),
    "yarn-rope-mscale-untruncated": Case(
        LlamaForCausalLM,
        _config(
            num_key_value_heads=2,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 50000.0,
                "factor": 8.0,
                "original_max_position_embeddings": 8,
                "beta_fast": 16,
                "beta_slow": 2,
                "mscale": 1.0,
                "mscale_all_dim": 0.5,
                "truncate": False,
            },
        ),
    ),
    # Dynamic NTK grows the base past max_position_embeddings: 12 tokens > 8 here; the padded
    # batch's shorter rows take the longest row's frequencies, as in HF.
    "dynamic-rope-past-max-positions": Case(
        LlamaForCausalLM,
        _config(max_position_embeddings=8, rope_scaling={"rope_type": "dynamic", "factor": 2.0}),
        rope_follows_longest_row=True,
    ),
    "dynamic-rope-within-max-positions": Case(
        LlamaForCausalLM, _config(rope_scaling={"rope_type": "dynamic", "factor": 3.7})
    ),
    "biases": Case(LlamaForCausalLM, _config(attention_bias=True, num_key_value_heads=2)),
    "mlp-biases": Case(LlamaForCausalLM, _config(mlp_bias=True, num_key_value_heads=2)),
}
