"""Cohere cases: tied embeddings with the logit scale folded into the tied W_U, GQA, untied
with attention biases, linear rope scaling with an explicit theta, and QK norms (LayerNorms with
per-head weights, Command R+) with MHA and GQA."""

from typing import Any

from transformers import CohereConfig, CohereForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> CohereConfig:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        logit_scale=0.25,
    )
    settings.update(overrides)
    return CohereConfig(**settings)


CASES = {
    "mha-tied": Case(CohereForCausalLM, _config()),
    "gqa-tied": Case(CohereForCausalLM, _config(num_key_value_heads=2, logit_scale=0.0625)),
    "untied-biases": Case(
        CohereForCausalLM,
        _config(tie_word_embeddings=False, attention_bias=True, num_key_value_heads=1),
    ),
    "linear-rope": Case(
        CohereForCausalLM,
        _config(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}),
    ),
    "qk-norm-mha": Case(CohereForCausalLM, _config(use_qk_norm=True)),
    "qk-norm-gqa-biases": Case(
        CohereForCausalLM, _config(use_qk_norm=True, num_key_value_heads=2, attention_bias=True)
    ),
}
