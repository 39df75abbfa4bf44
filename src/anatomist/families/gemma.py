"""Gemma 1 (GemmaForCausalLM): Llama with GeGLU, scaled embeddings and (1 + w) RMSNorms.

Differences from Llama: every RMSNorm stores w and multiplies by (1 + w), so the transform adds
the one (in float32, as transformers computes it); token embeddings are multiplied by
sqrt(d_model); the gated MLP uses tanh-approximated GELU (a config saying "gelu" means that too,
as transformers reads it); head_dim is its own setting (default 256, not d_model / n_heads);
embeddings are tied by default. Bidirectional attention (`use_bidirectional_attention`) is not
supported.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from anatomist.config import TransformerConfig
from anatomist.families.base import Family, WeightRule
from anatomist.families.llama import _L, IGNORE, RULES, head_dim, llama_rope, llama_style_config


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    if hf.get("use_bidirectional_attention"):
        raise NotImplementedError(
            "use_bidirectional_attention=True (non-causal Gemma) is not supported."
        )
    act = hf.get("hidden_act", "gelu_pytorch_tanh")
    return llama_style_config(
        hf,
        "GemmaForCausalLM",
        rope=llama_rope,
        n_ctx=hf.get("max_position_embeddings", 8192),
        d_head=head_dim(hf, default=256),
        act_fn="gelu_pytorch_tanh" if act == "gelu" else act,
        embed_scale=math.sqrt(hf["hidden_size"]),
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
    )


def plus_one(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    """Gemma RMSNorm weight w -> the multiplier (1 + w)."""
    return (t.float() + 1.0,)


_NORMS = {
    _L + r"input_layernorm\.weight": "blocks.{i}.ln1.w",
    _L + r"post_attention_layernorm\.weight": "blocks.{i}.ln2.w",
    r"(?:model\.)?norm\.weight": "ln_final.w",
}

FAMILY = Family(
    name="gemma",
    architectures=("GemmaForCausalLM", "GemmaModel"),
    model_types=("gemma",),
    build_config=build_config,
    rules=(
        *(WeightRule(pattern, (target,), plus_one) for pattern, target in _NORMS.items()),
        *(rule for rule in RULES if rule.pattern not in _NORMS),
    ),
    ignore=IGNORE,
)
