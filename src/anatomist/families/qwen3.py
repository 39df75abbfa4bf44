"""Qwen3 (Qwen3ForCausalLM): Qwen2 with per-head RMSNorm on queries and keys.

Differences from Qwen2: q_norm and k_norm (RMSNorm over d_head, shared by all heads) run on each
head's query and key before rotary; biases follow `attention_bias` (q, k, v and o together, off
by default) instead of always being on; head_dim is its own setting (default 128). Sliding
windows are configured as in Qwen2.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.base import Family
from anatomist.families.llama import (
    IGNORE,
    QK_NORM_RULES,
    RULES,
    head_dim,
    llama_rope,
    llama_style_config,
)
from anatomist.families.qwen2 import window_settings


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    window, layer_types = window_settings(hf)
    return llama_style_config(
        hf,
        "Qwen3ForCausalLM",
        rope=llama_rope,
        n_ctx=hf.get("max_position_embeddings", 32768),
        d_head=head_dim(hf, default=128),
        qk_norm=True,
        sliding_window=window,
        layer_types=layer_types,
    )


FAMILY = Family(
    name="qwen3",
    architectures=("Qwen3ForCausalLM", "Qwen3Model"),
    model_types=("qwen3",),
    build_config=build_config,
    rules=(*RULES, *QK_NORM_RULES),
    ignore=IGNORE,
)
