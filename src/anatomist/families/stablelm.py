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

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from anatomist.config import TransformerConfig
from anatomist.families import llama
from anatomist.families.base import Family, input_norm, norm_rules
from anatomist.families.gpt_neox import partial_rotary_settings


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    d_head = hf["hidden_size"] // hf["num_attention_heads"]
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
_PER_HEAD_NORM = re.compile(
    _L + r"self_attn\.(?P<qk>[qk])_layernorm\.norms\.(?P<h>\d+)\.(?P<p>weight|bias)"
)


@dataclass(frozen=True)
class PerHeadNormFamily(Family):
    """StableLM's loader: collects the per-head QK norm tensors of a layer (one per head) and
    returns them stacked, ``[heads, d_head]``, once the last head arrives."""

    # target -> (the config of the load in progress, tensors by head); entries of another load
    # (one that failed halfway) are discarded.
    _pending: dict[str, tuple[TransformerConfig, dict[int, Tensor]]] = field(
        default_factory=dict, repr=False
    )

    def convert(self, name: str, tensor: Tensor, cfg: TransformerConfig) -> dict[str, Tensor]:
        match = _PER_HEAD_NORM.fullmatch(name)
        if match is None:
            return super().convert(name, tensor, cfg)
        qk, head = match["qk"], int(match["h"])
        heads = cfg.n_heads if qk == "q" else cfg.n_kv_heads
        if head >= heads:
            raise KeyError(name)
        param = "w" if match["p"] == "weight" else "b"
        target = f"blocks.{match['i']}.attn.{qk}_norm.{param}"
        owner, parts = self._pending.get(target, (cfg, {}))
        parts = parts if owner is cfg else {}
        parts[head] = tensor
        if len(parts) < heads:
            self._pending[target] = (cfg, parts)
            return {}
        self._pending.pop(target, None)
        return {target: torch.stack([parts[h] for h in range(heads)])}


FAMILY = PerHeadNormFamily(
    name="stablelm",
    architectures=("StableLmForCausalLM", "StableLmModel"),
    model_types=("stablelm",),
    build_config=build_config,
    rules=NORM_RULES + OTHER_RULES,
    ignore=llama.IGNORE,
)
