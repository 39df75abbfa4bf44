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
from anatomist.families.base import WeightRule, same
from anatomist.families.llama import _L, RULES
from anatomist.families.mistral import llama_rope
from anatomist.families.mixtral import EXPERT_RULES, IGNORE, MoEFamily
from anatomist.families.qwen2_moe import mlp_settings


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    d_head = hf.get("head_dim") or d_model // n_heads
    theta, scaling = llama_rope(hf)
    window = hf.get("sliding_window") if hf.get("use_sliding_window", False) else None
    return TransformerConfig(
        n_layers=hf["num_hidden_layers"],
        d_model=d_model,
        n_ctx=hf.get("max_position_embeddings", 32768),
        d_head=d_head,
        n_heads=n_heads,
        n_key_value_heads=hf.get("num_key_value_heads") or n_heads,
        d_vocab=hf["vocab_size"],
        act_fn=hf.get("hidden_act", "silu"),
        gated_mlp=True,
        **mlp_settings(hf, shared_expert=False),
        normalization_type="RMS",
        eps=hf.get("rms_norm_eps", 1e-6),
        qk_norm=True,
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        rotary_base=theta,
        rope_scaling=scaling,
        sliding_window=window,
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        original_architecture="Qwen3MoeForCausalLM",
    )


FAMILY = MoEFamily(
    name="qwen3_moe",
    architectures=("Qwen3MoeForCausalLM", "Qwen3MoeModel"),
    model_types=("qwen3_moe",),
    build_config=build_config,
    rules=(
        *RULES,
        *EXPERT_RULES,
        WeightRule(_L + r"self_attn\.q_norm\.weight", ("blocks.{i}.attn.q_norm.w",), same),
        WeightRule(_L + r"self_attn\.k_norm\.weight", ("blocks.{i}.attn.k_norm.w",), same),
    ),
    ignore=IGNORE,
)
