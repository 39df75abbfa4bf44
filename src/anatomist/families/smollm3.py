"""SmolLM3 (SmolLM3ForCausalLM; HuggingFaceTB/SmolLM3-3B): Llama with NoPE layers.

Differs from Llama: some layers use no positional encoding at all (NoPE): ``no_rope_layers`` has
one entry per layer, 1 = rotary, 0 = none (without it, every ``no_rope_layer_interval``-th layer,
default 4, is NoPE), loaded as ``nope_layers``; rope theta defaults to 2,000,000; embeddings are
tied by default; ``attention_bias`` biases q, k, v and o, ``mlp_bias`` all three MLP projections.
Sliding windows apply to the layers ``layer_types`` marks "sliding_attention" (without
``layer_types``: the NoPE layers, when ``use_sliding_window`` and ``sliding_window`` are set), as
transformers' SDPA and eager attention apply them.
"""

from __future__ import annotations

from functools import partial
from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.base import Family
from anatomist.families.llama import IGNORE, RULES, llama_rope, llama_style_config
from anatomist.families.qwen2 import checked_layer_types
from anatomist.families.seed_oss import GATE_BIAS

DEFAULT_THETA = 2_000_000.0  # SmolLM3Config.default_theta


def rope_layers(hf: dict[str, Any]) -> list[bool]:
    """Whether each layer uses rotary, from ``no_rope_layers`` or ``no_rope_layer_interval``."""
    n_layers = hf["num_hidden_layers"]
    flags = hf.get("no_rope_layers")
    if flags is None:
        interval = hf.get("no_rope_layer_interval", 4)
        flags = [int((i + 1) % interval != 0) for i in range(n_layers)]
    if len(flags) < n_layers:
        raise ValueError(f"no_rope_layers has {len(flags)} entries for {n_layers} layers.")
    return [bool(flag) for flag in flags[:n_layers]]


def layer_types_of(hf: dict[str, Any], uses_rope: list[bool]) -> list[str]:
    """Per-layer attention types as SmolLM3Config derives them: without ``layer_types``, the
    NoPE layers slide when sliding windows are on."""
    layer_types = hf.get("layer_types")
    if layer_types is None:
        sliding = hf.get("use_sliding_window", False) and hf.get("sliding_window") is not None
        layer_types = [
            "sliding_attention" if sliding and not rope else "full_attention" for rope in uses_rope
        ]
    checked_layer_types(layer_types, len(uses_rope))
    return list(layer_types[: len(uses_rope)])


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    uses_rope = rope_layers(hf)
    layer_types = layer_types_of(hf, uses_rope)
    window = hf.get("sliding_window")
    if "sliding_attention" in layer_types and window is None:
        raise ValueError(
            "layer_types marks sliding-attention layers but sliding_window is null (transformers "
            "cannot build their mask either); set sliding_window or mark every layer "
            "full_attention."
        )
    cfg = llama_style_config(
        hf,
        "SmolLM3ForCausalLM",
        rope=partial(llama_rope, default_theta=DEFAULT_THETA),
        nope_layers=[i for i, rope in enumerate(uses_rope) if not rope] or None,
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
    )
    if "sliding_attention" in layer_types:
        cfg.sliding_window, cfg.layer_types = window, layer_types
    return cfg


FAMILY = Family(
    name="smollm3",
    architectures=("SmolLM3ForCausalLM", "SmolLM3Model"),
    model_types=("smollm3",),
    build_config=build_config,
    rules=(GATE_BIAS, *RULES),
    ignore=IGNORE,
)
