"""GLM-4 (GlmForCausalLM; THUDM glm-4-9b): Llama with partial, GPT-J-style rotary and fused MLP.

Differs from Llama: rotary turns only the first ``partial_rotary_factor`` (0.5 by default) of each
head, pairing neighbouring features (``2i`` with ``2i + 1``); ``attention_bias`` (on by default)
biases q/k/v but never o_proj; the MLP's gate and up projections are one ``gate_up_proj`` (gate
first, as Phi-3). Also the base of GLM-4-0414 (`glm4`).
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families import llama
from anatomist.families.base import Family, WeightRule
from anatomist.families.llama import IGNORE, head_dim, llama_style_config
from anatomist.families.phi3 import _FUSED


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    params = {**(hf.get("rope_parameters") or {}), **(hf.get("rope_scaling") or {})}
    factor = float(params.get("partial_rotary_factor", hf.get("partial_rotary_factor", 0.5)))
    return llama_style_config(
        hf,
        "GlmForCausalLM",
        rotary_dim=int(head_dim(hf) * factor),
        rotary_adjacent_pairs=True,
    )


GATE_UP = next(rule for rule in _FUSED if "gate_up_proj" in rule.pattern)
RULES: tuple[WeightRule, ...] = (GATE_UP,) + llama.RULES

FAMILY = Family(
    name="glm",
    architectures=("GlmForCausalLM", "GlmModel"),
    model_types=("glm",),
    build_config=build_config,
    rules=RULES,
    ignore=IGNORE,
)
