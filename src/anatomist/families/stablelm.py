"""StableLM (StableLmForCausalLM; StableLM 2, StableLM-3B-4E1T): Llama layout with LayerNorms.

Differs from Llama: LayerNorms with weight and bias; rotary (halves pairing) on only the first
``partial_rotary_factor`` of each head (default 0.25); optional q/k/v biases (``use_qkv_bias``;
the output projection has none); optionally a parallel block (``use_parallel_residual``) where
attention and the SwiGLU MLP read the same ``input_layernorm`` (loaded as both ln1 and ln2; its
bias folds into b_in and b_gate). With ``qk_layernorm`` (StableLM 2 12B) each head's query and
key pass through its own LayerNorm over d_head (weight, no bias) before rotary; the checkpoint
stores one tensor per head (``q_layernorm.norms.{h}.weight``), which loading stacks into the
native ``attn.q_norm.w [n_heads, d_head]`` (``k_norm``: ``[n_kv_heads, d_head]``).
"""

from __future__ import annotations

from typing import Any

import torch

from anatomist.config import TransformerConfig
from anatomist.families import llama
from anatomist.families.base import (
    Family,
    TensorGroup,
    as_optional,
    head_size,
    input_norm,
    norm_rules,
)
from anatomist.families.gpt_neox import partial_rotary_settings


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    d_head = head_size(
        hf["hidden_size"], hf["num_attention_heads"], "hidden_size", "num_attention_heads"
    )
    cfg = llama.llama_style_config(
        hf,
        "StableLmForCausalLM",
        n_ctx=hf.get("max_position_embeddings", 4096),
        d_head=d_head,
        normalization_type="LN",
        eps=hf.get("layer_norm_eps", 1e-5),
        parallel_attn_mlp=bool(hf.get("use_parallel_residual", False)),
        **partial_rotary_settings(hf, d_head, "partial_rotary_factor", "rope_theta", 0.25),
    )
    if hf.get("qk_layernorm", False):  # one LayerNorm (weight only) per head, over d_head
        cfg.qk_norm, cfg.qk_norm_type, cfg.qk_norm_per_head_weights = True, "LN", True
    return cfg


_L = llama._L
NORM_RULES = (
    *norm_rules(_L + "input_layernorm", "blocks.{i}.ln1", "blocks.{i}.ln2", transform=input_norm),
    *norm_rules(_L + "post_attention_layernorm", "blocks.{i}.ln2"),
    *norm_rules(r"(?:model\.)?norm", "ln_final"),
)
OTHER_RULES = tuple(rule for rule in llama.RULES if "norm" not in rule.pattern)
# One LayerNorm per head: ``{q,k}_layernorm.norms.{h}.weight``, stacked into
# ``{q,k}_layernorm.weight [heads, d_head]`` by the group, then loaded like any norm.
PER_HEAD_NORMS = TensorGroup(
    r"(?P<norm>" + _L + r"self_attn\.(?P<qk>[qk])_layernorm)\.norms\.(?P<part>\d+)\."
    r"(?P<param>weight|bias)",
    whole=r"\g<norm>.\g<param>",
    parts=lambda match, cfg: tuple(
        str(h) for h in range(cfg.n_heads if match["qk"] == "q" else cfg.n_kv_heads)
    ),
    combine=lambda heads, cfg: torch.stack(heads),
)
# transformers builds these per-head LayerNorms without biases; a checkpoint that has them is
# read, one without is the usual case.
QK_NORM_RULES = tuple(
    rule if rule.pattern.endswith("weight") else as_optional(rule)[0]
    for rule in (
        *norm_rules(_L + r"self_attn\.q_layernorm", "blocks.{i}.attn.q_norm"),
        *norm_rules(_L + r"self_attn\.k_layernorm", "blocks.{i}.attn.k_norm"),
    )
)


FAMILY = Family(
    name="stablelm",
    architectures=("StableLmForCausalLM", "StableLmModel"),
    model_types=("stablelm",),
    build_config=build_config,
    rules=NORM_RULES + QK_NORM_RULES + OTHER_RULES,
    ignore=llama.IGNORE,
    groups=(PER_HEAD_NORMS,),
)
