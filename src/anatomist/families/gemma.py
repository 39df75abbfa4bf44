"""Gemma 1 (GemmaForCausalLM): Llama with GeGLU, scaled embeddings and (1 + w) RMSNorms.

Differences from Llama: every RMSNorm stores w and multiplies by (1 + w): the weights load as
stored (``ln1.w`` is w, as in transformers, where the classic library stored 1 + w) and the
norm adds the one at run time (``norm_weight_offset``), in float32 with the weight multiplied
before the cast back (``norm_weight_in_float32``: ``(x * (1 + w)).to(dtype)``), as transformers
computes it; token embeddings are multiplied by sqrt(d_model), rounded to the model's dtype
first (``embed_scale_in_dtype``), as transformers does; the gated MLP uses tanh-approximated
GELU (a config saying "gelu" means that too, as transformers reads it); head_dim is its own setting (default 256, not d_model / n_heads);
embeddings are tied by default. Bidirectional attention (`use_bidirectional_attention`) is not
supported.
"""

from __future__ import annotations

import math
from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.base import Family
from anatomist.families.llama import IGNORE, RULES, head_dim, llama_rope, llama_style_config


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
        embed_scale_in_dtype=True,
        norm_weight_offset=1.0,
        norm_weight_in_float32=True,
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
    )


FAMILY = Family(
    name="gemma",
    architectures=("GemmaForCausalLM", "GemmaModel"),
    model_types=("gemma",),
    build_config=build_config,
    rules=RULES,
    ignore=IGNORE,
)
