"""Ministral (MinistralForCausalLM): Mistral with per-layer sliding windows.

Differs from Mistral: `layer_types` decides which layers use the sliding window (by default every
layer when `sliding_window` is set, none when it is null); built on Qwen2's attention, but with no
query/key/value biases. The weight names are Llama's.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families import mistral
from anatomist.families.base import Family
from anatomist.families.llama import IGNORE, RULES
from anatomist.families.qwen2 import checked_layer_types


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    cfg = mistral.build_config(hf)
    n_layers, window = cfg.n_layers, cfg.sliding_window
    layer_types = (
        hf.get("layer_types")
        or ["sliding_attention" if window is not None else "full_attention"] * n_layers
    )
    checked_layer_types(layer_types, n_layers)
    if window is None or "sliding_attention" not in layer_types:
        cfg.sliding_window, cfg.layer_types = None, None
    else:
        cfg.layer_types = list(layer_types[:n_layers])
    cfg.original_architecture = "MinistralForCausalLM"
    return cfg


FAMILY = Family(
    name="ministral",
    architectures=("MinistralForCausalLM", "MinistralModel"),
    model_types=("ministral",),
    build_config=build_config,
    rules=RULES,
    ignore=IGNORE,
)
