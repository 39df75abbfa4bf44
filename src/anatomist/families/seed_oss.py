"""Seed-OSS (SeedOssForCausalLM; ByteDance Seed-OSS): Llama with separately switched biases.

Differs from Llama: `attention_bias` puts biases on q/k/v (on by default), `attention_out_bias`
on o_proj, and `mlp_bias` on all three MLP projections, the gate included (b_gate); the head
width is `head_dim` (128 by default), independent of `hidden_size`. Dropout on the attention and
MLP outputs applies in training only. The weight names are Llama's.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.base import Family, WeightRule, same
from anatomist.families.llama import _L, IGNORE, RULES, llama_rope, llama_style_config


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    return llama_style_config(hf, "SeedOssForCausalLM", rope=llama_rope)


# The gate projection's bias exists only under mlp_bias.
GATE_BIAS = WeightRule(_L + r"mlp\.gate_proj\.bias", ("blocks.{i}.mlp.b_gate",), same, True)

FAMILY = Family(
    name="seed_oss",
    architectures=("SeedOssForCausalLM", "SeedOssModel"),
    model_types=("seed_oss",),
    build_config=build_config,
    rules=(GATE_BIAS, *RULES),
    ignore=IGNORE,
)
