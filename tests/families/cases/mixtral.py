"""Mixtral cases: top-2 of 4 experts with GQA, top-1 of 8 (idle experts) with a sliding window and
tied embeddings, top-3 of 6 with MHA and linear rope scaling."""

from typing import Any

from transformers import MixtralConfig, MixtralForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> MixtralConfig:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        vocab_size=101,
        max_position_embeddings=64,
        num_local_experts=4,
        num_experts_per_tok=2,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    return MixtralConfig(**settings)


CASES = {
    "top2-of-4-gqa": Case(MixtralForCausalLM, _config()),
    "top1-of-8-window-tied": Case(
        MixtralForCausalLM,
        _config(
            num_local_experts=8, num_experts_per_tok=1, sliding_window=4, tie_word_embeddings=True
        ),
    ),
    "top3-of-6-mha-linear-rope": Case(
        MixtralForCausalLM,
        _config(
            num_local_experts=6,
            num_experts_per_tok=3,
            num_key_value_heads=4,
            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0},
        ),
    ),
}
