"""Cohere (CohereForCausalLM; Command-R, Aya 23): a parallel Llama-like block with a LayerNorm.

Differs from Llama: each block is parallel (attention and the SwiGLU MLP both read resid_pre
through *one* shared norm, ``input_layernorm``, loaded as both ln1 and ln2); the norms are
mean-centering LayerNorms with a weight and no bias (computed in float32); rotary pairs
neighbouring features ``(2i, 2i+1)`` (GPT-J style) with a default theta of 500000; logits are
multiplied by ``logit_scale`` (folded into W_U at load, also when W_U is the tied input embedding,
the default). With ``use_qk_norm`` (Command R+) each head's query and key pass through a LayerNorm
over d_head with per-head weights and no bias (``q_norm``/``k_norm``, weights ``[heads, d_head]``)
before rotary.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families import granite, llama
from anatomist.families.base import Family, WeightRule, rope_settings, shared_norm


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    params = hf.get("rope_parameters") or {}
    if float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
        raise NotImplementedError("Cohere with partial_rotary_factor != 1 is not supported.")
    logit_scale = hf.get("logit_scale", 0.0625)
    if logit_scale is None:
        raise ValueError("Cohere config has logit_scale=None, which the architecture cannot run.")
    cfg = llama.llama_style_config(
        hf,
        "CohereForCausalLM",
        rope=partial(rope_settings, default_theta=500000.0),
        normalization_type="LN",
        eps=hf.get("layer_norm_eps") or 1e-5,
        parallel_attn_mlp=True,
        rotary_adjacent_pairs=True,
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
    )
    if hf.get("use_qk_norm"):
        cfg.qk_norm, cfg.qk_norm_type, cfg.qk_norm_per_head_weights = True, "LN", True
    return granite.with_folded_scales(cfg, logits=float(logit_scale))


_L = llama._L
NORM_RULES = (
    WeightRule(
        _L + r"input_layernorm\.weight", ("blocks.{i}.ln1.w", "blocks.{i}.ln2.w"), shared_norm
    ),
    # use_qk_norm: weights [heads, d_head], as the native per-head norms hold them
    *llama.QK_NORM_RULES,
)
OTHER_RULES = tuple(
    rule
    for rule in llama.RULES
    if "layernorm" not in rule.pattern
    and "embed_tokens" not in rule.pattern
    and "lm_head" not in rule.pattern
)

FAMILY = Family(
    name="cohere",
    architectures=("CohereForCausalLM", "CohereModel"),
    model_types=("cohere",),
    build_config=build_config,
    rules=(granite.EMBED_TIED, granite.UNEMBED) + NORM_RULES + OTHER_RULES,
    ignore=llama.IGNORE,
)
