"""EXAONE 4.0 (Exaone4ForCausalLM; LG AI EXAONE-4.0): OLMo 2's block with per-head QK norms.

Differs from Llama: no norm before attention or the MLP; RMSNorms on their outputs
(``post_attention_layernorm`` -> ``ln1_post``, ``post_feedforward_layernorm`` -> ``ln2_post``),
as OLMo 2; RMSNorm of each head's query and key (``q_norm``/``k_norm``, over d_head, before
rotary), as Qwen3.

Hybrid attention (EXAONE-4.0-32B): with `sliding_window` set, the layers `layer_types` marks
"sliding_attention" (or, without `layer_types`, all but every `sliding_window_pattern`-th layer)
use the window and rotary, and the full-attention layers use no positional encoding at all (NoPE,
``nope_layers``). With `sliding_window` null every layer is full attention with rotary
(EXAONE-4.0-1.2B).
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families import olmo2
from anatomist.families.base import Family
from anatomist.families.llama import llama_rope, llama_style_config
from anatomist.families.qwen2 import checked_layer_types


def layer_types_of(hf: dict[str, Any], window: int | None) -> list[str]:
    n_layers = hf["num_hidden_layers"]
    layer_types = hf.get("layer_types")
    if layer_types is None:
        pattern = hf.get("sliding_window_pattern", 4) if window is not None else 0
        if not isinstance(pattern, int):
            raise NotImplementedError(
                f"sliding_window_pattern={pattern!r} is not supported (an int, or layer_types)."
            )
        layer_types = [
            "sliding_attention" if pattern and (i + 1) % pattern != 0 else "full_attention"
            for i in range(n_layers)
        ]
    checked_layer_types(layer_types, n_layers)
    return list(layer_types[:n_layers])


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    window = hf.get("sliding_window", 4096)
    layer_types = layer_types_of(hf, window)
    if window is None and "sliding_attention" in layer_types:
        raise ValueError(
            "layer_types marks sliding-attention layers but sliding_window is null (transformers "
            "cannot build their mask either); set sliding_window or mark every layer "
            "full_attention."
        )
    cfg = llama_style_config(
        hf,
        "Exaone4ForCausalLM",
        rope=llama_rope,
        eps=hf.get("rms_norm_eps", 1e-5),
        pre_norm=False,
        post_norm_type="RMS",
        qk_norm=True,
    )
    if window is not None:  # hybrid: full-attention layers are NoPE (Exaone4Attention.forward)
        cfg.sliding_window, cfg.layer_types = window, layer_types
        cfg.nope_layers = [
            i for i, kind in enumerate(layer_types) if kind == "full_attention"
        ] or None
    return cfg


FAMILY = Family(
    name="exaone4",
    architectures=("Exaone4ForCausalLM", "Exaone4Model"),
    model_types=("exaone4",),
    build_config=build_config,
    rules=olmo2.RULES,
    ignore=olmo2.FAMILY.ignore,
)
