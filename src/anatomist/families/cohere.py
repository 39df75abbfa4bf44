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

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families import granite, llama
from anatomist.families.base import Family, WeightRule, same
from anatomist.families.gptj import shared_norm


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    params = hf.get("rope_parameters") or {}
    if float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))) != 1.0:
        raise NotImplementedError("Cohere with partial_rotary_factor != 1 is not supported.")
    logit_scale = hf.get("logit_scale", 0.0625)
    if logit_scale is None:
        raise ValueError("Cohere config has logit_scale=None, which the architecture cannot run.")
    cfg = llama.build_config(hf)
    cfg.rotary_base, cfg.rope_scaling = granite.checked_rope(hf, default_theta=500000.0)
    cfg.normalization_type = "LN"
    cfg.eps = hf.get("layer_norm_eps") or 1e-5
    cfg.parallel_attn_mlp = True
    cfg.rotary_adjacent_pairs = True
    if hf.get("use_qk_norm"):
        cfg.qk_norm, cfg.qk_norm_type, cfg.qk_norm_per_head_weights = True, "LN", True
    cfg.tie_word_embeddings = hf.get("tie_word_embeddings", True)
    cfg.original_architecture = "CohereForCausalLM"
    return granite.with_folded_scales(cfg, logits=float(logit_scale))


_L = llama._L
NORM_RULES = (
    WeightRule(
        _L + r"input_layernorm\.weight", ("blocks.{i}.ln1.w", "blocks.{i}.ln2.w"), shared_norm
    ),
    # use_qk_norm: weights [heads, d_head], as the native per-head norms hold them
    WeightRule(_L + r"self_attn\.q_norm\.weight", ("blocks.{i}.attn.q_norm.w",), same),
    WeightRule(_L + r"self_attn\.k_norm\.weight", ("blocks.{i}.attn.k_norm.w",), same),
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
    ignore=(_L + r"self_attn\.rotary_emb\.inv_freq",),
)
