"""Llama (LlamaForCausalLM): RMSNorm, rotary (with rope scaling), SwiGLU, grouped-query attention.

Also the base that many later families (Mistral, Qwen2, ...) describe themselves as a diff on.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.base import (
    Family,
    WeightRule,
    kv_bias,
    kv_weight,
    output_weight,
    query_bias,
    query_weight,
    rope_settings,
    same,
    transpose,
)


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    d_head = hf.get("head_dim") or d_model // n_heads
    theta, scaling = rope_settings(hf)
    return TransformerConfig(
        n_layers=hf["num_hidden_layers"],
        d_model=d_model,
        n_ctx=hf.get("max_position_embeddings", 2048),
        d_head=d_head,
        n_heads=n_heads,
        n_key_value_heads=hf.get("num_key_value_heads") or n_heads,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        act_fn=hf.get("hidden_act", "silu"),
        gated_mlp=True,
        normalization_type="RMS",
        eps=hf.get("rms_norm_eps", 1e-6),
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        rotary_base=theta,
        rope_scaling=scaling,
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        original_architecture="LlamaForCausalLM",
    )


_L = r"(?:model\.)?layers\.(?P<i>\d+)\."
_A = "blocks.{i}.attn."

RULES = (
    WeightRule(r"(?:model\.)?embed_tokens\.weight", ("embed.W_E",), same),
    WeightRule(_L + r"input_layernorm\.weight", ("blocks.{i}.ln1.w",), same),
    WeightRule(_L + r"self_attn\.q_proj\.weight", (_A + "W_Q",), query_weight),
    WeightRule(_L + r"self_attn\.k_proj\.weight", (_A + "{kv}W_K",), kv_weight),
    WeightRule(_L + r"self_attn\.v_proj\.weight", (_A + "{kv}W_V",), kv_weight),
    WeightRule(_L + r"self_attn\.o_proj\.weight", (_A + "W_O",), output_weight),
    WeightRule(_L + r"self_attn\.q_proj\.bias", (_A + "b_Q",), query_bias),
    WeightRule(_L + r"self_attn\.k_proj\.bias", (_A + "{kv}b_K",), kv_bias),
    WeightRule(_L + r"self_attn\.v_proj\.bias", (_A + "{kv}b_V",), kv_bias),
    WeightRule(_L + r"self_attn\.o_proj\.bias", (_A + "b_O",), same),
    WeightRule(_L + r"post_attention_layernorm\.weight", ("blocks.{i}.ln2.w",), same),
    WeightRule(_L + r"mlp\.gate_proj\.weight", ("blocks.{i}.mlp.W_gate",), transpose),
    WeightRule(_L + r"mlp\.up_proj\.weight", ("blocks.{i}.mlp.W_in",), transpose),
    WeightRule(_L + r"mlp\.down_proj\.weight", ("blocks.{i}.mlp.W_out",), transpose),
    WeightRule(_L + r"mlp\.up_proj\.bias", ("blocks.{i}.mlp.b_in",), same),
    WeightRule(_L + r"mlp\.down_proj\.bias", ("blocks.{i}.mlp.b_out",), same),
    WeightRule(r"(?:model\.)?norm\.weight", ("ln_final.w",), same),
    WeightRule(r"lm_head\.weight", ("unembed.W_U",), transpose),
)

FAMILY = Family(
    name="llama",
    architectures=("LlamaForCausalLM", "LlamaModel"),
    model_types=("llama",),
    build_config=build_config,
    rules=RULES,
    ignore=(_L + r"self_attn\.rotary_emb\.inv_freq",),
)
