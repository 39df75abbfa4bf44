"""Gemma 2 (Gemma2ForCausalLM): Gemma with four norms per block, soft caps and local layers.

Differs from Gemma 1: RMSNorms (all ``1 + w``) before *and after* attention and the MLP
(``post_attention_layernorm`` is the norm on the attention output, ``pre_feedforward_layernorm``
the MLP's input norm); attention scores scaled by ``query_pre_attn_scalar ** -0.5`` and soft
capped; final logits soft capped; layers alternate between sliding-window and full attention.
"""

from __future__ import annotations

import math
from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families import gemma
from anatomist.families.base import Family, WeightRule, same
from anatomist.families.llama import _L, IGNORE, RULES


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    cfg = gemma.build_config(hf)
    cfg.attn_scale = math.sqrt(hf.get("query_pre_attn_scalar") or cfg.d_head)
    cfg.post_norm_type = "RMS"
    cfg.attn_scores_soft_cap = hf.get("attn_logit_softcapping")
    cfg.output_logits_soft_cap = hf.get("final_logit_softcapping")
    cfg.sliding_window = hf.get("sliding_window")
    cfg.layer_types = hf.get("layer_types") or [
        "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(cfg.n_layers)
    ]
    cfg.original_architecture = "Gemma2ForCausalLM"
    return cfg


NORMS = {
    _L + r"input_layernorm\.weight": "blocks.{i}.ln1.w",
    _L + r"post_attention_layernorm\.weight": "blocks.{i}.ln1_post.w",
    _L + r"pre_feedforward_layernorm\.weight": "blocks.{i}.ln2.w",
    _L + r"post_feedforward_layernorm\.weight": "blocks.{i}.ln2_post.w",
    r"(?:model\.)?norm\.weight": "ln_final.w",
}
NORM_RULES = tuple(WeightRule(p, (target,), same) for p, target in NORMS.items())
OTHER_RULES = tuple(
    rule for rule in RULES if "layernorm" not in rule.pattern and "norm" not in rule.pattern
)

FAMILY = Family(
    name="gemma2",
    architectures=("Gemma2ForCausalLM", "Gemma2Model"),
    model_types=("gemma2",),
    build_config=build_config,
    rules=NORM_RULES + OTHER_RULES,
    ignore=IGNORE,
)
