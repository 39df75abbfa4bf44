"""Qwen2-MoE (Qwen2MoeForCausalLM): Qwen2 with a sparse mixture of experts plus a gated shared
expert in every layer.

Differences from Qwen2: each MLP is `num_experts` SwiGLU experts of width `moe_intermediate_size`
behind a linear router (every token through its top `num_experts_per_tok`, weighted by the
router's softmax probabilities, renormalised over those experts only with `norm_topk_prob`), plus
a SwiGLU shared expert of width `shared_expert_intermediate_size` that every token runs through,
scaled by ``sigmoid(x @ shared_expert_gate)``. q, k and v carry biases when `qkv_bias` (default).
Sliding windows follow this config's own rule: without `layer_types`, the even-numbered layers
below `max_window_layers` slide when `use_sliding_window`. Layer i has the experts unless it is in
`mlp_only_layers` or (i + 1) is not a multiple of `decoder_sparse_step`; the other layers have a
dense SwiGLU MLP of width `intermediate_size` (``moe_layers``, ``d_mlp_dense``), with no shared
expert. Without experts (`num_experts` 0) every layer is dense. Expert weight names:
`anatomist.families.mixtral`.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.base import WeightRule, transpose
from anatomist.families.llama import _L, IGNORE, RULES, llama_rope, llama_style_config
from anatomist.families.mixtral import EXPERT_RULES, MoEFamily, expert_count, moe_settings
from anatomist.families.qwen2 import checked_layer_types


def mlp_settings(hf: dict[str, Any], shared_expert: bool) -> dict[str, Any]:
    """The MLP fields of TransformerConfig by transformers' Qwen-MoE layer rule: layer i has the
    experts unless it is in `mlp_only_layers` or (i + 1) % `decoder_sparse_step` != 0; the other
    layers have a dense MLP `intermediate_size` wide."""
    n_experts, step = expert_count(hf, default=0), hf.get("decoder_sparse_step", 1)
    only = set(hf.get("mlp_only_layers") or ())
    n_layers = hf["num_hidden_layers"]
    moe = [i for i in range(n_layers) if i not in only and n_experts > 0 and (i + 1) % step == 0]
    if not moe:  # every layer dense: a plain gated-MLP model
        return dict(d_mlp=hf["intermediate_size"])
    settings = dict(
        d_mlp=hf["moe_intermediate_size"],
        **moe_settings(hf, hf.get("norm_topk_prob", False), n_experts),
    )
    if shared_expert:
        settings["d_mlp_shared"] = hf["shared_expert_intermediate_size"]
    if len(moe) < n_layers:
        settings.update(moe_layers=moe, d_mlp_dense=hf["intermediate_size"])
    return settings


def window_settings(hf: dict[str, Any]) -> tuple[int | None, list[str] | None]:
    """Sliding window and per-layer attention types, as transformers' Qwen2MoeConfig derives them."""
    n_layers = hf["num_hidden_layers"]
    sliding = bool(hf.get("use_sliding_window", False))
    layer_types = hf.get("layer_types") or [
        "sliding_attention"
        if sliding and (i + 1) % 2 and i < hf.get("max_window_layers", 28)
        else "full_attention"
        for i in range(n_layers)
    ]
    checked_layer_types(layer_types, n_layers)
    window = hf.get("sliding_window") if sliding else None
    if not window or "sliding_attention" not in layer_types:
        return None, None
    return window, list(layer_types)


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    window, layer_types = window_settings(hf)
    return llama_style_config(
        hf,
        "Qwen2MoeForCausalLM",
        rope=llama_rope,
        n_ctx=hf.get("max_position_embeddings", 32768),
        **mlp_settings(hf, shared_expert=True),
        sliding_window=window,
        layer_types=layer_types,
    )


_S = _L + r"mlp\.shared_expert"
_T = "blocks.{i}.mlp.shared_expert."

SHARED_EXPERT_RULES = (
    WeightRule(_S + r"\.gate_proj\.weight", (_T + "W_gate",), transpose),
    WeightRule(_S + r"\.up_proj\.weight", (_T + "W_in",), transpose),
    WeightRule(_S + r"\.down_proj\.weight", (_T + "W_out",), transpose),
    WeightRule(_S + r"_gate\.weight", ("blocks.{i}.mlp.W_shared_gate",), transpose),
)

FAMILY = MoEFamily(
    name="qwen2_moe",
    architectures=("Qwen2MoeForCausalLM", "Qwen2MoeModel"),
    model_types=("qwen2_moe",),
    build_config=build_config,
    rules=(*RULES, *EXPERT_RULES, *SHARED_EXPERT_RULES),
    ignore=IGNORE,
)
