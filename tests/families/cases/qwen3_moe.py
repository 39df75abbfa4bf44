"""Qwen3-MoE cases: top-2 of 4 experts with GQA and head_dim 16; top-3 of 6 renormalised
(`norm_topk_prob`) with a sliding window on every layer, MHA, attention biases and tied embeddings;
top-1 of 8 (idle experts) with linear rope scaling; dense and expert layers mixed."""

from typing import Any

from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> Qwen3MoeConfig:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        moe_intermediate_size=24,
        vocab_size=101,
        max_position_embeddings=64,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=False,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    return Qwen3MoeConfig(**settings)


CASES = {
    "top2-of-4-gqa-head-dim": Case(Qwen3MoeForCausalLM, _config(head_dim=16)),
    "top3-of-6-normalized-window-mha-biases-tied": Case(
        Qwen3MoeForCausalLM,
        _config(
            num_experts=6,
            num_experts_per_tok=3,
            norm_topk_prob=True,
            num_key_value_heads=4,
            attention_bias=True,
            use_sliding_window=True,
            sliding_window=4,
            tie_word_embeddings=True,
        ),
    ),
    "top1-of-8-linear-rope": Case(
        Qwen3MoeForCausalLM,
        _config(
            num_experts=8,
            num_experts_per_tok=1,
            rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1000.0},
        ),
    ),
    # Layers 1 and 3 have experts (decoder_sparse_step=2), 0 and 2 a dense MLP; 2 also by name.
    "mixed-dense-and-experts": Case(
        Qwen3MoeForCausalLM,
        _config(num_hidden_layers=4, decoder_sparse_step=2, mlp_only_layers=[2]),
    ),
}
