"""OLMo 2 (Olmo2ForCausalLM): Llama with norms on the outputs instead of the inputs.

Differs from Llama: no norm before attention or the MLP; RMSNorms on their outputs
(``post_attention_layernorm`` -> ``ln1_post``, ``post_feedforward_layernorm`` -> ``ln2_post``);
RMSNorm over all heads' queries and over all keys (``q_norm``/``k_norm``) before rotary. Every
RMSNorm multiplies its weight in float32 and casts once, ``(x * w).to(dtype)``
(``norm_weight_in_float32``), as transformers does. Not reproduced in half precision: HF's OLMo
rotary runs in float32 and rounds once; ours rotates in the dtype.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families import llama
from anatomist.families.base import Family, WeightRule, same
from anatomist.families.llama import _L, IGNORE, QK_NORM_RULES, llama_style_config


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    if hf.get("clip_qkv") is not None:
        raise NotImplementedError("OLMo 2 with clip_qkv is not supported.")
    return llama_style_config(
        hf,
        "Olmo2ForCausalLM",
        pre_norm=False,
        post_norm_type="RMS",
        qk_norm=True,
        qk_norm_over_heads=True,
        norm_weight_in_float32=True,
    )


POST_NORM_RULES = (
    WeightRule(_L + r"post_attention_layernorm\.weight", ("blocks.{i}.ln1_post.w",), same),
    WeightRule(_L + r"post_feedforward_layernorm\.weight", ("blocks.{i}.ln2_post.w",), same),
    *QK_NORM_RULES,
)
RULES = POST_NORM_RULES + tuple(r for r in llama.RULES if "layernorm" not in r.pattern)

FAMILY = Family(
    name="olmo2",
    architectures=("Olmo2ForCausalLM", "Olmo2Model"),
    model_types=("olmo2",),
    build_config=build_config,
    rules=RULES,
    ignore=IGNORE,
)
