"""OLMo 3 (Olmo3ForCausalLM): OLMo 2 with sliding-window layers (three local to one global).

Rope parameters may differ per layer type: sliding layers must use plain rope (their own
theta); full-attention layers may carry the checkpoint's scaling (any type in
`base.ROPE_TYPES`).
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families import olmo2
from anatomist.families.base import Family, rope_settings


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    hf = dict(hf)
    params = hf.get("rope_parameters") or {}
    local = params.get("sliding_attention")
    if local is not None:
        if local.get("rope_type", "default") != "default":
            raise NotImplementedError(
                "OLMo 3 with rope scaling on sliding layers is not supported."
            )
        hf["rope_parameters"] = params.get("full_attention") or local
    cfg = olmo2.build_config(hf)
    _, cfg.rope_scaling = rope_settings(hf)
    if local is not None:
        cfg.rotary_base_local = float(local.get("rope_theta", cfg.rotary_base))
    cfg.sliding_window = hf.get("sliding_window")
    cfg.layer_types = hf.get("layer_types")
    cfg.original_architecture = "Olmo3ForCausalLM"
    return cfg


FAMILY = Family(
    name="olmo3",
    architectures=("Olmo3ForCausalLM", "Olmo3Model"),
    model_types=("olmo3",),
    build_config=build_config,
    rules=olmo2.RULES,
    ignore=olmo2.FAMILY.ignore,
)
