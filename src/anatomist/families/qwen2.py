"""Qwen2 (Qwen2ForCausalLM): Llama with query/key/value biases and optional sliding windows.

Differences from Llama: q_proj, k_proj and v_proj always carry biases (o_proj and the MLP never
do); sliding-window attention is off unless `use_sliding_window`, and then applies per layer:
the layers `layer_types` marks "sliding_attention", or, without `layer_types`, the layers from
`max_window_layers` on. The weight names are Llama's.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.base import Family
from anatomist.families.llama import _L, RULES
from anatomist.families.mistral import llama_rope

LAYER_TYPES = ("full_attention", "sliding_attention")


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
    unknown = sorted(set(layer_types) - set(LAYER_TYPES))
    if unknown:
        raise NotImplementedError(
            f"layer_types {unknown} are not supported (supported: {', '.join(LAYER_TYPES)})."
        )
    if len(layer_types) < n_layers:
        raise ValueError(f"layer_types has {len(layer_types)} entries for {n_layers} layers.")
    if window is None or "sliding_attention" not in layer_types:
        return None, None
    return window, list(layer_types)


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    d_head = hf.get("head_dim") or d_model // n_heads
    theta, scaling = llama_rope(hf)
    window, layer_types = window_settings(hf)
    return TransformerConfig(
        n_layers=hf["num_hidden_layers"],
        d_model=d_model,
        n_ctx=hf.get("max_position_embeddings", 32768),
        d_head=d_head,
        n_heads=n_heads,
        n_key_value_heads=hf.get("num_key_value_heads") or n_heads,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        act_fn=hf.get("hidden_act", "silu"),
        gated_mlp=True,
        normalization_type="RMS",
        eps=hf.get("rms_norm_eps", 1e-6),
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        rotary_base=theta,
        rope_scaling=scaling,
        sliding_window=window,
        layer_types=layer_types,
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        original_architecture="Qwen2ForCausalLM",
    )


FAMILY = Family(
    name="qwen2",
    architectures=("Qwen2ForCausalLM", "Qwen2Model"),
    model_types=("qwen2",),
    build_config=build_config,
    rules=RULES,
    ignore=(_L + r"self_attn\.rotary_emb\.inv_freq",),
)
