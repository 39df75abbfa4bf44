"""Qwen2-MoE cases: top-2 of 4 experts plus the gated shared expert, with GQA and q/k/v biases;
top-3 of 6 renormalised (`norm_topk_prob`) with a sliding window on layer 0, MHA, no biases and
tied embeddings; top-1 of 8 (idle experts); dense and expert layers mixed, by `mlp_only_layers` and
by `decoder_sparse_step`."""

from typing import Any

from transformers import Qwen2MoeConfig, Qwen2MoeForCausalLM

from tests.families.parity import Case


def _config(**overrides: Any) -> Qwen2MoeConfig:
    settings: dict[str, Any] = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        intermediate_size=48,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=40,
        vocab_size=101,
        max_position_embeddings=64,
        num_experts=4,
        num_experts_per_tok=2,
        norm_topk_prob=False,
        tie_word_embeddings=False,
    )
    settings.update(overrides)
    return Qwen2MoeConfig(**settings)


CASES = {
    "top2-of-4-shared-gqa-biases": Case(Qwen2MoeForCausalLM, _config()),
    "top3-of-6-normalized-window-mha-tied": Case(
        Qwen2MoeForCausalLM,
        _config(
            num_experts=6,
            num_experts_per_tok=3,
            norm_topk_prob=True,
            num_key_value_heads=4,
            qkv_bias=False,
            use_sliding_window=True,
            sliding_window=4,
            max_window_layers=2,
            tie_word_embeddings=True,
        ),
    ),
    "top1-of-8": Case(Qwen2MoeForCausalLM, _config(num_experts=8, num_experts_per_tok=1)),
    # Layers 0 and 2 dense (intermediate_size), 1 and 3 experts.
    "mixed-mlp-only-layers": Case(
        Qwen2MoeForCausalLM, _config(num_hidden_layers=4, mlp_only_layers=[0, 2])
    ),
    # Experts in every second layer (1, 3); 0 and 2 dense; 3 dense as well by mlp_only_layers.
    "mixed-sparse-step": Case(
        Qwen2MoeForCausalLM,
        _config(num_hidden_layers=4, decoder_sparse_step=2, mlp_only_layers=[3]),
    ),
}
