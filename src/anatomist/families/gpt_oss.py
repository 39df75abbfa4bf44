"""GPT-OSS (GptOssForCausalLM): a mixture-of-experts Llama with attention sinks.

Differences from Llama:
- attention: q/k/v/o biases (`attention_bias`, default on); a learned sink logit per head
  (``self_attn.sinks`` -> ``attn.sinks``, `attn_sinks`) joins every softmax as a key without a
  value; layers alternate sliding-window (`sliding_window`, default 128) and full attention by
  `layer_types` (default: even layers slide); YaRN rope (theta 150000, factor 32 by default, with
  `truncate`).
- MLP: `num_local_experts` experts behind a router with a bias (``mlp.router``); each token takes
  the top `num_experts_per_tok` router logits and a softmax over those alone
  (`router_softmax_over_topk`). Each expert is a gated MLP with biases whose gate and up
  projections are stored fused over experts and interleaved, ``mlp.experts.gate_up_proj [E, d,
  2m]`` (gate = even columns, up = odd) with ``gate_up_proj_bias [E, 2m]``, then ``down_proj [E,
  m, d]`` and ``down_proj_bias [E, d]``, already [in, out]. The activation is the clamped SwiGLU
  ``(clamp(up, -limit, limit) + 1) * g * sigmoid(alpha g)`` with ``g = min(gate, limit)``:
  `swiglu_limit` (7.0) from config.json, alpha 1.702 (the reference implementation's constant,
  `swiglu_alpha` in transformers' config), i.e. QuickGELU on the gate.
- norms: RMSNorms multiply their weight in float32 and cast once, ``(x * w).to(dtype)``
  (`norm_weight_in_float32`).

Weight processing folds the RMSNorms and centers the unembedding; value biases stay unfolded
(with sinks a pattern row does not sum to 1).

The released checkpoints store the expert matrices MXFP4-quantized (config.json:
``quantization_config`` with ``quant_method`` "mxfp4"; its ``modules_to_not_convert`` lists what
stayed float, which the tensor names say as well): ``gate_up_proj_blocks [E, 2m, d/32, 16]`` and
``gate_up_proj_scales [E, 2m, d/32]`` (``down_proj``: ``[E, d, m/32, 16]`` and ``[E, d, m/32]``),
uint8. Each row holds groups of 32 values: 16 bytes of 4-bit E2M1 numbers, two per byte (low
nibble first), and one E8M0 scale byte, 2**(byte - 127). A `TensorGroup` joins each pair and
dequantizes it as transformers does (``convert_moe_packed_tensors``, bit for bit: bfloat16,
exact for every value), to the float ``[E, d, 2m]`` / ``[E, m, d]`` layout above.

Not supported: a `swiglu_alpha` other than 1.702.
"""

from __future__ import annotations

import re
from typing import Any

import torch
from torch import Tensor

from anatomist.config import TransformerConfig
from anatomist.families.base import (
    TensorGroup,
    WeightRule,
    head_size,
    rope_settings,
    same,
    transpose,
)
from anatomist.families.llama import _L, RULES
from anatomist.families.mixtral import MoEFamily, expert_count

# transformers' GptOssConfig defaults, for keys a config.json leaves out.
_DEFAULT_THETA = 150000.0
_DEFAULT_ROPE = {
    "rope_type": "yarn",
    "factor": 32.0,
    "beta_fast": 32.0,
    "beta_slow": 1.0,
    "truncate": False,
    "original_max_position_embeddings": 4096,
}
_QUICK_GELU_ALPHA = 1.702
_LAYER_TYPES = ("sliding_attention", "full_attention")


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    n_layers, d_model, n_heads = (
        hf["num_hidden_layers"],
        hf["hidden_size"],
        hf["num_attention_heads"],
    )
    d_head = hf.get("head_dim", 64) or head_size(
        d_model, n_heads, "hidden_size", "num_attention_heads", False
    )
    alpha = hf.get("swiglu_alpha", _QUICK_GELU_ALPHA)
    if alpha != _QUICK_GELU_ALPHA:
        raise NotImplementedError(
            f"swiglu_alpha={alpha} is not supported: the native clamped SwiGLU uses QuickGELU "
            f"(alpha {_QUICK_GELU_ALPHA}), as every released GPT-OSS checkpoint does."
        )
    scaled = any(k != "rope_theta" for k in hf.get("rope_parameters") or {}) or hf.get(
        "rope_scaling"
    )
    rope = hf if scaled else {**hf, "rope_scaling": _DEFAULT_ROPE}
    theta, scaling = rope_settings({"rope_theta": _DEFAULT_THETA, **rope})
    window = hf.get("sliding_window", 128)
    layer_types = hf.get("layer_types") or [
        "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)
    ]
    unknown = sorted(set(layer_types) - set(_LAYER_TYPES))
    if unknown or len(layer_types) != n_layers:
        raise NotImplementedError(
            f"layer_types must name {n_layers} layers, each one of {', '.join(_LAYER_TYPES)}; "
            f"got {layer_types}."
        )
    n_experts = expert_count(hf, default=128)
    top_k = hf.get("num_experts_per_tok", 4)
    if not 1 <= top_k <= n_experts:
        raise ValueError(f"num_experts_per_tok={top_k} must be in 1..{n_experts} (the experts).")
    return TransformerConfig(
        n_layers=n_layers,
        d_model=d_model,
        n_ctx=hf.get("max_position_embeddings", 131072),
        d_head=d_head,
        n_heads=n_heads,
        n_key_value_heads=hf.get("num_key_value_heads", 8) or n_heads,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        act_fn="quick_gelu",
        gated_mlp=True,
        swiglu_limit=float(hf.get("swiglu_limit", 7.0)),
        num_experts=n_experts,
        experts_per_token=top_k,
        router_bias=True,
        router_softmax_over_topk=True,
        normalization_type="RMS",
        eps=hf.get("rms_norm_eps", 1e-5),
        norm_weight_in_float32=True,
        attn_sinks=True,
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        rotary_base=theta,
        rope_scaling=scaling,
        sliding_window=window,
        layer_types=list(layer_types) if window else None,
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        original_architecture="GptOssForCausalLM",
    )


def interleaved_gate_up(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    """experts.gate_up_proj [E, d, 2m] (or its bias [E, 2m]) -> gate, up: the even and the odd
    columns (transformers' ``gate_up[..., ::2], gate_up[..., 1::2]``)."""
    return t[..., ::2], t[..., 1::2]


# MXFP4 (OCP Microscaling Formats v1.0): E2M1 values by their 4-bit code (sign in the top bit),
# as transformers' FP4_VALUES; a block of 32 shares one E8M0 scale, 2**(byte - 127).
FP4_E2M1 = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
_E8M0_BIAS = 127


def dequantize_mxfp4(blocks: Tensor, scales: Tensor) -> Tensor:
    """MXFP4 ``blocks [E, rows, G, 16]`` and ``scales [E, rows, G]`` (uint8) -> bfloat16
    ``[E, G * 32, rows]``: transformers' ``convert_moe_packed_tensors``, bit for bit (the same
    table lookups and ``ldexp``), one expert at a time to bound the temporaries."""
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise ValueError(
            f"MXFP4 blocks and scales are uint8; got {blocks.dtype} and {scales.dtype}."
        )
    if blocks.dim() != 4 or blocks.shape[-1] != 16 or blocks.shape[:-1] != scales.shape:
        raise ValueError(
            f"MXFP4 blocks [E, rows, groups, 16] need scales [E, rows, groups]; got blocks "
            f"{tuple(blocks.shape)} and scales {tuple(scales.shape)}."
        )
    lut = torch.tensor(FP4_E2M1, dtype=torch.bfloat16)
    n_experts, rows, groups, _ = blocks.shape
    out = torch.empty(n_experts, rows, groups, 32, dtype=torch.bfloat16)  # [E, rows, G, 32]
    for e in range(n_experts):
        packed = blocks[e]  # [rows, G, 16]
        out[e, ..., 0::2] = lut[(packed & 0x0F).int()]  # element 2j: the low nibble
        out[e, ..., 1::2] = lut[(packed >> 4).int()]
        exponent = scales[e].int() - _E8M0_BIAS  # [rows, G]
        torch.ldexp(out[e], exponent[..., None], out=out[e])
    return out.view(n_experts, rows, groups * 32).transpose(1, 2)  # [E, G * 32, rows]


def _blocks_and_scales(match: re.Match[str], cfg: TransformerConfig) -> tuple[str, ...]:
    return ("blocks", "scales")


_M = _L + r"mlp\."
_X = "blocks.{i}.mlp.experts.{e}."

MXFP4_EXPERTS = TensorGroup(
    r"(?P<weight>" + _M + r"experts\.(?:gate_up|down)_proj)_(?P<part>blocks|scales)",
    whole=r"\g<weight>",
    parts=_blocks_and_scales,
    combine=lambda parts, cfg: dequantize_mxfp4(*parts),
)

GPT_OSS_RULES = (
    WeightRule(_L + r"self_attn\.sinks", ("blocks.{i}.attn.sinks",), same),
    WeightRule(_M + r"router\.weight", ("blocks.{i}.mlp.W_router",), transpose),
    WeightRule(_M + r"router\.bias", ("blocks.{i}.mlp.b_router",), same),
    WeightRule(_M + r"experts\.gate_up_proj", (_X + "W_gate", _X + "W_in"), interleaved_gate_up),
    WeightRule(
        _M + r"experts\.gate_up_proj_bias", (_X + "b_gate", _X + "b_in"), interleaved_gate_up
    ),
    WeightRule(_M + r"experts\.down_proj", (_X + "W_out",), same),  # [E, m, d]
    WeightRule(_M + r"experts\.down_proj_bias", (_X + "b_out",), same),  # [E, d]
)

FAMILY = MoEFamily(
    name="gpt_oss",
    architectures=("GptOssForCausalLM", "GptOssModel"),
    model_types=("gpt_oss",),
    build_config=build_config,
    rules=(*RULES, *GPT_OSS_RULES),
    groups=(MXFP4_EXPERTS,),
    quant_methods=("mxfp4",),
)
