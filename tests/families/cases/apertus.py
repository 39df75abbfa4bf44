"""Apertus cases: xIELU MLP and q/k norms with MHA/GQA/MQA, tied and untied embeddings, llama3
rope scaling (transformers' default, and one that scales these short positions), plain rope,
biases. save_tiny randomises each layer's xIELU alphas, so they differ by layer and from their
initial values."""

from typing import Any

from transformers import ApertusConfig, ApertusForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> ApertusConfig:
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
    return ApertusConfig(**settings)


CASES = {
    # transformers' default rope (llama3 scaling, theta 1.2e7, pretraining length 8192) and
    # context length, as in the released models
    "mha-untied-default-rope": Case(ApertusForCausalLM, _config(max_position_embeddings=65536)),
    "gqa-tied": Case(ApertusForCausalLM, _config(num_key_value_heads=2, tie_word_embeddings=True)),
    "mqa-llama3-rope-scaling": Case(
        ApertusForCausalLM,
        _config(
            num_key_value_heads=1,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 4.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 8,
            },
        ),
    ),
    "plain-rope-wide-heads-biases": Case(
        ApertusForCausalLM,
        _config(
            num_key_value_heads=2,
            head_dim=16,
            attention_bias=True,
            rope_parameters={"rope_type": "default", "rope_theta": 500000.0},
        ),
    ),
}
