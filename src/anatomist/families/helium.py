"""Helium (HeliumForCausalLM; Kyutai Helium 1): Llama with GPT-J-style rotary pairs.

Differs from Llama: rotary pairs neighbouring features (``2i`` with ``2i + 1``) instead of
halves; ``attention_bias`` biases q/k/v but never o_proj; ``mlp_bias`` biases all three MLP
projections, the gate included (b_gate). o_proj is ``hidden_size x hidden_size``, so the heads
must span the model width; RMSNorms multiply their weight in float32 and cast once,
``(x * w).to(dtype)`` (``norm_weight_in_float32``). The weight names are Llama's.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.base import Family
from anatomist.families.llama import IGNORE, RULES, llama_rope, llama_style_config
from anatomist.families.seed_oss import GATE_BIAS


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    cfg = llama_style_config(
        hf,
        "HeliumForCausalLM",
        rope=llama_rope,
        rotary_adjacent_pairs=True,
        norm_weight_in_float32=True,
    )
    if cfg.n_heads * cfg.d_head != cfg.d_model:
        raise ValueError(
            f"Helium needs num_attention_heads * head_dim ({cfg.n_heads} * {cfg.d_head}) to "
            f"equal hidden_size ({cfg.d_model}): its o_proj is hidden_size x hidden_size."
        )
    return cfg


FAMILY = Family(
    name="helium",
    architectures=("HeliumForCausalLM", "HeliumModel"),
    model_types=("helium",),
    build_config=build_config,
    rules=(GATE_BIAS, *RULES),
    ignore=IGNORE,
)
