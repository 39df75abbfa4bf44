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
from anatomist.families.llama import _L, RULES
from anatomist.families.mistral import llama_rope


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    if hf.get("use_bidirectional_attention"):
        raise NotImplementedError(
            "use_bidirectional_attention=True (non-causal Gemma) is not supported."
        )
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    d_head = hf.get("head_dim", 256) or d_model // n_heads
    theta, scaling = llama_rope(hf)
    act = hf.get("hidden_act", "gelu_pytorch_tanh")
    return TransformerConfig(
        n_layers=hf["num_hidden_layers"],
        d_model=d_model,
        n_ctx=hf.get("max_position_embeddings", 8192),
        d_head=d_head,
        n_heads=n_heads,
        n_key_value_heads=hf.get("num_key_value_heads") or n_heads,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        act_fn="gelu_pytorch_tanh" if act == "gelu" else act,
        gated_mlp=True,
        normalization_type="RMS",
        eps=hf.get("rms_norm_eps", 1e-6),
        embed_scale=math.sqrt(d_model),
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        rotary_base=theta,
        rope_scaling=scaling,
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        original_architecture="GemmaForCausalLM",
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
    ignore=(_L + r"self_attn\.rotary_emb\.inv_freq",),
)
