"""InternLM3 (InternLM3ForCausalLM; internlm3-8b): Llama, with one switch for all biases.

transformers has no InternLM3 modeling code of its own: its `internlm3` config (``qkv_bias`` and
``bias`` are aliases of Llama's ``attention_bias`` and ``mlp_bias``, which it requires equal) runs
on `LlamaForCausalLM`. Checkpoints name the remote-code class InternLM3ForCausalLM, whose weight
names are Llama's; ``mlp_bias`` also biases the gate projection (b_gate).
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families import llama
from anatomist.families.base import Family
from anatomist.families.mistral import llama_rope
from anatomist.families.seed_oss import GATE_BIAS

_L = llama._L


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    hf = dict(hf)
    hf.setdefault("head_dim", 128)  # InternLM3Config's default, unlike Llama's
    cfg = llama.build_config(hf)
    cfg.rotary_base, cfg.rope_scaling = llama_rope(hf)
    cfg.original_architecture = "InternLM3ForCausalLM"
    return cfg


FAMILY = Family(
    name="internlm3",
    architectures=("InternLM3ForCausalLM",),
    model_types=("internlm3",),
    build_config=build_config,
    rules=(GATE_BIAS,) + llama.RULES,
    ignore=(_L + r"self_attn\.rotary_emb\.inv_freq",),
)
