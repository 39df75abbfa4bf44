"""Qwen3 (Qwen3ForCausalLM): Qwen2 with per-head RMSNorm on queries and keys.

Differences from Qwen2: q_norm and k_norm (RMSNorm over d_head, shared by all heads) run on each
head's query and key before rotary; biases follow `attention_bias` (q, k, v and o together, off
by default) instead of always being on; head_dim is its own setting (default 128). Sliding
windows are configured as in Qwen2.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.base import Family, WeightRule, same
from anatomist.families.llama import _L, RULES
from anatomist.families.mistral import llama_rope
from anatomist.families.qwen2 import window_settings


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    d_head = hf.get("head_dim", 128) or d_model // n_heads
    theta, scaling = llama_rope(hf)
    window, layer_types = window_settings(hf)
    return TransformerConfig(
        n_layers=hf["num_hidden_layers"],
        d_model=d_model,
        n_ctx=hf.get("max_position_embeddings", 32768),
        d_head=d_head,
        n_heads=n_heads,
        n_key_value_heads=hf.get("num_key_value_heads") or n_heads,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        act_fn=hf.get("hidden_act", "silu"),
        gated_mlp=True,
        normalization_type="RMS",
        eps=hf.get("rms_norm_eps", 1e-6),
        qk_norm=True,
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        rotary_base=theta,
        rope_scaling=scaling,
        sliding_window=window,
        layer_types=layer_types,
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        original_architecture="Qwen3ForCausalLM",
    )


FAMILY = Family(
    name="qwen3",
    architectures=("Qwen3ForCausalLM", "Qwen3Model"),
    model_types=("qwen3",),
    build_config=build_config,
    rules=(
        *RULES,
        WeightRule(_L + r"self_attn\.q_norm\.weight", ("blocks.{i}.attn.q_norm.w",), same),
        WeightRule(_L + r"self_attn\.k_norm\.weight", ("blocks.{i}.attn.k_norm.w",), same),
    ),
    ignore=(_L + r"self_attn\.rotary_emb\.inv_freq",),
)
