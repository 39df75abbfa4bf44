"""GPT-OSS cases: attention sinks, sliding-window and full layers alternating (sequences longer
than the window), YaRN rope, the biased top-k-then-softmax router and the clamped SwiGLU experts.

top-2 of 4 experts with GQA and YaRN (truncated and not); top-1 of 8 (idle experts) with MHA, a
head size that is not a multiple of 8, a limit low enough that the clamps act, no attention biases
and tied embeddings; top-3 of 6 with custom layer types and transformers' default rope (YaRN,
factor 32)."""

from typing import Any

from transformers import GptOssConfig, GptOssForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> GptOssConfig:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=4,  # sliding, full, sliding, full
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        intermediate_size=24,
        vocab_size=101,
        max_position_embeddings=64,
        sliding_window=4,
        num_local_experts=4,
        num_experts_per_tok=2,
        rope_parameters={
            "rope_type": "yarn",
            "rope_theta": 1000.0,
            "factor": 4.0,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "truncate": False,
            "original_max_position_embeddings": 16,
        },
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    return GptOssConfig(**settings)


_TRUNCATED_YARN = {
    "rope_type": "yarn",
    "rope_theta": 500.0,
    "factor": 8.0,
    "original_max_position_embeddings": 8,
}

CASES = {
    "top2-of-4-gqa-window-yarn": Case(GptOssForCausalLM, _config()),
    "top2-of-4-truncated-yarn": Case(GptOssForCausalLM, _config(rope_parameters=_TRUNCATED_YARN)),
    "top1-of-8-mha-head12-clamped-tied": Case(
        GptOssForCausalLM,
        _config(
            num_local_experts=8,
            num_experts_per_tok=1,
            num_key_value_heads=4,
            head_dim=12,
            swiglu_limit=0.3,
            attention_bias=False,
            tie_word_embeddings=True,
        ),
    ),
    "top3-of-6-layer-types-default-rope": Case(
        GptOssForCausalLM,
        _config(
            num_local_experts=6,
            num_experts_per_tok=3,
            layer_types=[
                "full_attention",
                "sliding_attention",
                "sliding_attention",
                "full_attention",
            ],
            rope_parameters=None,  # YaRN, factor 32 from 4096 positions
            max_position_embeddings=131072,
        ),
    ),
}
