"""Seed-OSS (SeedOssForCausalLM; ByteDance Seed-OSS): Llama with separately switched biases.

Differs from Llama: `attention_bias` puts biases on q/k/v (on by default), `attention_out_bias`
on o_proj, and `mlp_bias` on all three MLP projections, the gate included (b_gate); the head
width is `head_dim` (128 by default), independent of `hidden_size`. Dropout on the attention and
MLP outputs applies in training only. The weight names are Llama's.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families import llama
from anatomist.families.base import Family, WeightRule, same
from anatomist.families.mistral import llama_rope

_L = llama._L


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    cfg = llama.build_config(hf)
    cfg.rotary_base, cfg.rope_scaling = llama_rope(hf)
    cfg.original_architecture = "SeedOssForCausalLM"
    return cfg


GATE_BIAS = WeightRule(_L + r"mlp\.gate_proj\.bias", ("blocks.{i}.mlp.b_gate",), same)

FAMILY = Family(
    name="seed_oss",
    architectures=("SeedOssForCausalLM", "SeedOssModel"),
    model_types=("seed_oss",),
    build_config=build_config,
    rules=(GATE_BIAS,) + llama.RULES,
    ignore=(_L + r"self_attn\.rotary_emb\.inv_freq",),
)
