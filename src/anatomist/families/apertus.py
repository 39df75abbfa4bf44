"""Apertus (ApertusForCausalLM, swiss-ai/Apertus-8B-2509): Llama with a non-gated xIELU MLP and
per-head RMSNorm on queries and keys.

Differences from Llama: the MLP is ``down_proj(xielu(up_proj(x)))`` with no gate, and xIELU has
two learned scalars per layer (``mlp.act_fn.alpha_p`` / ``alpha_n``, stored before softplus; they
load as ``blocks.{i}.mlp.xielu_alpha_p`` / ``xielu_alpha_n``). Its fixed beta (0.5) and eps
(-1e-6) are buffers in the checkpoint, checked against the native constants on load. q_norm and
k_norm (RMSNorm over d_head, shared by all heads) run before rotary, as in Qwen3. The layernorms
are named ``attention_layernorm`` and ``feedforward_layernorm``. Without rope settings in
config.json, transformers fills in llama3 scaling with theta 1.2e7 (and ignores a lone legacy
``rope_theta``); so does this mapping.

Not supported: ``hidden_act`` values the native MLP lacks (the config names what it accepts).
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor

from anatomist.config import TransformerConfig
from anatomist.families.base import Family, Transform, WeightRule, rope_settings, same
from anatomist.families.llama import _L, IGNORE, QK_NORM_RULES, RULES, llama_style_config
from anatomist.model.mlp import XIELU_BETA, XIELU_EPS

DEFAULT_ROPE_THETA = 12000000.0
# ApertusConfig's rope when config.json has neither rope_parameters nor rope_scaling.
DEFAULT_ROPE = {
    "rope_type": "llama3",
    "rope_theta": DEFAULT_ROPE_THETA,
    "factor": 8.0,
    "original_max_position_embeddings": 8192,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
}


def apertus_rope(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or DEFAULT_ROPE)
    params.setdefault("rope_theta", hf.get("rope_theta", DEFAULT_ROPE_THETA))
    return rope_settings({**hf, "rope_parameters": params, "rope_scaling": None})


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    return llama_style_config(
        hf,
        "ApertusForCausalLM",
        rope=apertus_rope,
        n_ctx=hf.get("max_position_embeddings", 65536),
        act_fn=hf.get("hidden_act", "xielu"),
        gated_mlp=False,
        eps=hf.get("rms_norm_eps", 1e-5),
        qk_norm=True,
    )


def _fixed(name: str, value: float) -> Transform:
    """A transform for a checkpoint buffer the native xIELU holds as a constant: checks it (to
    the precision of the checkpoint's dtype) and loads nothing."""

    def check(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
        stored = float(t.float().reshape(-1)[0])
        if t.numel() != 1 or not math.isclose(stored, value, rel_tol=1e-2):
            raise NotImplementedError(
                f"This checkpoint's xIELU {name} is {stored:.6g}; the native xIELU supports only "
                f"transformers' fixed {name} = {value}."
            )
        return ()

    return check


_M = _L + r"mlp\.act_fn\."

FAMILY = Family(
    name="apertus",
    architectures=("ApertusForCausalLM", "ApertusModel"),
    model_types=("apertus",),
    build_config=build_config,
    rules=(
        *RULES,
        WeightRule(_L + r"attention_layernorm\.weight", ("blocks.{i}.ln1.w",), same),
        WeightRule(_L + r"feedforward_layernorm\.weight", ("blocks.{i}.ln2.w",), same),
        *QK_NORM_RULES,
        WeightRule(_M + r"alpha_p", ("blocks.{i}.mlp.xielu_alpha_p",), same),
        WeightRule(_M + r"alpha_n", ("blocks.{i}.mlp.xielu_alpha_n",), same),
        WeightRule(_M + r"beta", (), _fixed("beta", XIELU_BETA)),
        WeightRule(_M + r"eps", (), _fixed("eps", XIELU_EPS)),
    ),
    ignore=IGNORE,
)
