"""Phi-3 (Phi3ForCausalLM): Llama with fused projections, partial rotary and a sliding window.

Differs from Llama in the checkpoint layout only: ``qkv_proj`` holds q, k and v stacked along
the output axis, ``gate_up_proj`` the gate and up projections (gate first). ``longrope`` scaling
(the 128k-context variants) picks its short or long factors by the batch's longest row against
``original_max_position_embeddings``, which is read from the top level of the config (default
4096) as transformers does, not from the rope parameters.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from anatomist.config import TransformerConfig
from anatomist.families import llama
from anatomist.families.base import (
    Family,
    WeightRule,
    kv_weight,
    query_weight,
    rope_settings,
    transpose,
)


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    hf = _longrope_aliases(hf)
    cfg = llama.build_config(hf)
    # Phi3Config declares its own pretraining length (default 4096), which transformers puts over
    # the one in the rope parameters.
    original = int(hf.get("original_max_position_embeddings", 4096))
    _, cfg.rope_scaling = rope_settings(hf, original_max_positions=original)
    params = hf.get("rope_parameters") or {}
    factor = float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)))
    cfg.rotary_dim = int(cfg.d_head * factor)
    cfg.sliding_window = hf.get("sliding_window")
    cfg.original_architecture = "Phi3ForCausalLM"
    return cfg


def _longrope_aliases(hf: dict[str, Any]) -> dict[str, Any]:
    """Phi3Config reads the rope types "su" and "yarn" of early checkpoints as longrope."""
    hf = dict(hf)
    for key in ("rope_scaling", "rope_parameters"):
        params = hf.get(key)
        if params and params.get("rope_type", params.get("type")) in ("su", "yarn"):
            hf[key] = {**params, "rope_type": "longrope"}
    return hf


def split_qkv(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    q_rows, kv_rows = cfg.n_heads * cfg.d_head, cfg.n_kv_heads * cfg.d_head
    q, k, v = t.split([q_rows, kv_rows, kv_rows], dim=0)
    return query_weight(q, cfg) + kv_weight(k, cfg) + kv_weight(v, cfg)


def split_gate_up(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    gate, up = t.chunk(2, dim=0)
    return transpose(gate, cfg) + transpose(up, cfg)


_L = llama._L
_FUSED = (
    WeightRule(
        _L + r"self_attn\.qkv_proj\.weight",
        ("blocks.{i}.attn.W_Q", "blocks.{i}.attn.{kv}W_K", "blocks.{i}.attn.{kv}W_V"),
        split_qkv,
    ),
    WeightRule(
        _L + r"mlp\.gate_up_proj\.weight",
        ("blocks.{i}.mlp.W_gate", "blocks.{i}.mlp.W_in"),
        split_gate_up,
    ),
)

FAMILY = Family(
    name="phi3",
    architectures=("Phi3ForCausalLM",),
    model_types=("phi3",),
    build_config=build_config,
    rules=_FUSED + llama.RULES,
)
