"""Qwen2 (Qwen2ForCausalLM): Llama with query/key/value biases and optional sliding windows.

Differences from Llama: q_proj, k_proj and v_proj always carry biases (o_proj and the MLP never
do); sliding-window attention is off unless `use_sliding_window`, and then applies per layer:
the layers `layer_types` marks "sliding_attention", or, without `layer_types`, the layers from
`max_window_layers` on; partial rotary is refused; the context defaults to 32768. The weight
names are Llama's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.base import Family, WeightRule
from anatomist.families.llama import IGNORE, RULES, llama_rope, llama_style_config

LAYER_TYPES = ("full_attention", "sliding_attention")


def with_required_qkv_biases(rules: tuple[WeightRule, ...]) -> tuple[WeightRule, ...]:
    """Llama's rules with the query, key and value biases required: transformers builds them
    unconditionally for Qwen2 (not for Qwen2-MoE, which has `qkv_bias`), so a checkpoint without
    them is incomplete, not a config without biases (Llama's optional rules load them as zeros)."""
    return tuple(
        dataclasses.replace(rule, optional=False)
        if rule.pattern.endswith((r"q_proj\.bias", r"k_proj\.bias", r"v_proj\.bias"))
        else rule
        for rule in rules
    )


QWEN2_RULES = with_required_qkv_biases(RULES)


def checked_layer_types(layer_types: list[str], n_layers: int) -> None:
    """Refuse attention types the native model lacks, and a list shorter than the model."""
    unknown = sorted(set(layer_types) - set(LAYER_TYPES))
    if unknown:
        raise NotImplementedError(
            f"layer_types {unknown} are not supported (supported: {', '.join(LAYER_TYPES)})."
        )
    if len(layer_types) < n_layers:
        raise ValueError(f"layer_types has {len(layer_types)} entries for {n_layers} layers.")


def window_settings(hf: dict[str, Any]) -> tuple[int | None, list[str] | None]:
    """The sliding window and per-layer attention types, as transformers' Qwen2Config derives
    them (also used by Qwen3)."""
    n_layers = hf["num_hidden_layers"]
    window = hf.get("sliding_window", 4096) if hf.get("use_sliding_window", False) else None
    layer_types = hf.get("layer_types")
    if layer_types is None:
        first = hf.get("max_window_layers", 28)
        layer_types = [
            "sliding_attention" if window is not None and i >= first else "full_attention"
            for i in range(n_layers)
        ]
    checked_layer_types(layer_types, n_layers)
    if window is None or "sliding_attention" not in layer_types:
        return None, None
    return window, list(layer_types)


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    window, layer_types = window_settings(hf)
    return llama_style_config(
        hf,
        "Qwen2ForCausalLM",
        rope=llama_rope,
        n_ctx=hf.get("max_position_embeddings", 32768),
        sliding_window=window,
        layer_types=layer_types,
    )


FAMILY = Family(
    name="qwen2",
    architectures=("Qwen2ForCausalLM", "Qwen2Model"),
    model_types=("qwen2",),
    build_config=build_config,
    rules=QWEN2_RULES,
    ignore=IGNORE,
)
