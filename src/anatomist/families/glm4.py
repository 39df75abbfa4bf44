"""GLM-4-0414 (Glm4ForCausalLM; THUDM GLM-4-*-0414, GLM-Z1): GLM with four norms per block.

Differs from GLM (`glm`): RMSNorms also on the outputs of attention (``post_self_attn_layernorm``
-> ``ln1_post``) and of the MLP (``post_mlp_layernorm`` -> ``ln2_post``), before each residual
add, as Gemma 2 (but with plain ``w`` weights). ``post_attention_layernorm`` is still the MLP's
input norm (``ln2``).
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families import glm
from anatomist.families.base import Family, WeightRule, same
from anatomist.families.llama import _L


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    cfg = glm.build_config(hf)
    cfg.post_norm_type = "RMS"
    cfg.original_architecture = "Glm4ForCausalLM"
    return cfg


POST_NORMS = (
    WeightRule(_L + r"post_self_attn_layernorm\.weight", ("blocks.{i}.ln1_post.w",), same),
    WeightRule(_L + r"post_mlp_layernorm\.weight", ("blocks.{i}.ln2_post.w",), same),
)

FAMILY = Family(
    name="glm4",
    architectures=("Glm4ForCausalLM", "Glm4Model"),
    model_types=("glm4",),
    build_config=build_config,
    rules=POST_NORMS + glm.RULES,
    ignore=glm.FAMILY.ignore,
)
