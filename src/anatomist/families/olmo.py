"""OLMo (OlmoForCausalLM, OLMo 1): Llama with a non-parametric LayerNorm.

What differs from Llama: every norm is a LayerNorm WITHOUT weight or bias (mean-centred, eps fixed
at 1e-5), which is the native ``LNPre``; the checkpoint has no norm tensors at all. Rotary (halves
pairing), SwiGLU, optional grouped-query attention and attention biases, as Llama. ``clip_qkv``
(clamping q, k and v elementwise after projection) has no native counterpart and is refused.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families import llama
from anatomist.families.base import Family


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    if hf.get("clip_qkv") is not None:
        raise NotImplementedError(
            f"olmo: clip_qkv={hf['clip_qkv']} (clamping q, k and v after projection) is not "
            "supported by the native model."
        )
    return llama.llama_style_config(
        hf,
        "OlmoForCausalLM",
        normalization_type="LNPre",  # OlmoLayerNorm: no weight, no bias
        eps=1e-5,  # hard-coded in OlmoLayerNorm
    )


FAMILY = Family(
    name="olmo",
    architectures=("OlmoForCausalLM", "OlmoModel"),
    model_types=("olmo",),
    build_config=build_config,
    rules=llama.RULES,  # same tensor names; the norm rules never match (no norm tensors)
    ignore=llama.IGNORE,
)
