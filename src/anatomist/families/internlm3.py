"""InternLM3 (InternLM3ForCausalLM; internlm3-8b): Llama, with one switch for all biases.

transformers has no InternLM3 modeling code of its own: its `internlm3` config (``qkv_bias`` and
``bias`` are aliases of Llama's ``attention_bias`` and ``mlp_bias``, which it requires equal) runs
on `LlamaForCausalLM`. Checkpoints name the remote-code class InternLM3ForCausalLM, whose weight
names are Llama's; ``mlp_bias`` also biases the gate projection (b_gate).
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.base import Family
from anatomist.families.llama import IGNORE, RULES, head_dim, llama_rope, llama_style_config
from anatomist.families.seed_oss import GATE_BIAS


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    return llama_style_config(
        hf,
        "InternLM3ForCausalLM",
        rope=llama_rope,
        d_head=head_dim(hf, default=128),  # InternLM3Config's default, unlike Llama's
    )


FAMILY = Family(
    name="internlm3",
    architectures=("InternLM3ForCausalLM",),
    model_types=("internlm3",),
    build_config=build_config,
    rules=(GATE_BIAS, *RULES),
    ignore=IGNORE,
)
