"""Qwen3-MoE (Qwen3MoeForCausalLM): Qwen3 with a sparse mixture-of-experts MLP in every layer.

Differences from Qwen3: each MLP is `num_experts` SwiGLU experts of width `moe_intermediate_size`
behind a linear router, every token going through its top `num_experts_per_tok` experts weighted
by the router's softmax probabilities (renormalised over those experts only with
`norm_topk_prob`); no shared expert. Per-head q/k RMSNorm and `attention_bias` as Qwen3; head_dim
defaults to hidden_size / num_attention_heads. With `use_sliding_window`, every layer slides.
Dense layers among the expert layers (`mlp_only_layers`, `decoder_sparse_step`) follow Qwen2-MoE's
rule (`anatomist.families.qwen2_moe.mlp_settings`). Expert weight names:
`anatomist.families.mixtral`.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.llama import IGNORE, QK_NORM_RULES, RULES, llama_rope, llama_style_config
from anatomist.families.mixtral import EXPERT_RULES, MoEFamily
from anatomist.families.qwen2_moe import mlp_settings


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    return llama_style_config(
        hf,
        "Qwen3MoeForCausalLM",
        rope=llama_rope,
        n_ctx=hf.get("max_position_embeddings", 32768),
        **mlp_settings(hf, shared_expert=False),
        qk_norm=True,
        sliding_window=hf.get("sliding_window") if hf.get("use_sliding_window", False) else None,
    )


FAMILY = MoEFamily(
    name="qwen3_moe",
    architectures=("Qwen3MoeForCausalLM", "Qwen3MoeModel"),
    model_types=("qwen3_moe",),
    build_config=build_config,
    rules=(*RULES, *EXPERT_RULES, *QK_NORM_RULES),
    ignore=IGNORE,
)
