"""Seed-OSS cases: q/k/v biases (the default), every bias, none, GQA, tied, rope scaling."""

from typing import Any

from transformers import SeedOssConfig, SeedOssForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> SeedOssConfig:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        head_dim=8,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    return SeedOssConfig(**settings)


CASES = {
    "qkv-bias-mha": Case(SeedOssForCausalLM, _config()),
    "all-biases-gqa": Case(
        SeedOssForCausalLM,
        _config(num_key_value_heads=2, attention_out_bias=True, mlp_bias=True),
    ),
    "no-bias-mqa-tied": Case(
        SeedOssForCausalLM,
        _config(attention_bias=False, num_key_value_heads=1, tie_word_embeddings=True),
    ),
    "wide-heads-llama3-rope": Case(
        SeedOssForCausalLM,
        _config(
            head_dim=16,
            num_key_value_heads=2,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 500000.0,
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 16,
            },
        ),
    ),
}
