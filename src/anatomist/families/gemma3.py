"""Gemma 3 text (Gemma3ForCausalLM, and the language model of Gemma3ForConditionalGeneration).

Gemma 2's block (four ``1 + w`` RMSNorms, ``query_pre_attn_scalar``) plus per-head QK RMSNorms
(also ``1 + w``) and two rope bases: sliding-window layers use ``rope_local_base_freq``
unscaled, full-attention layers ``rope_theta`` with the checkpoint's rope scaling. Five local
layers to one global by default. In the multimodal checkpoints only the language model loads;
the vision tower and projector are skipped.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families import gemma2
from anatomist.families.base import Family, WeightRule, rope_settings, same


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    hf = dict(hf.get("text_config") or hf)  # multimodal checkpoints nest the text model
    params = hf.get("rope_parameters") or {}
    local_params = params.get("sliding_attention")
    if local_params is not None:  # transformers 5: rope parameters per layer type
        hf["rope_parameters"] = params.get("full_attention") or {}
        if local_params.get("rope_type", "default") != "default":
            raise NotImplementedError("Gemma 3 with rope scaling on local layers is not supported.")
        local_base = float(local_params.get("rope_theta", 10000.0))
    else:
        local_base = float(hf.get("rope_local_base_freq", 10000.0))
    pattern = int(hf.get("sliding_window_pattern") or hf.get("_sliding_window_pattern") or 6)
    hf.setdefault(
        "layer_types",
        [
            "full_attention" if (i + 1) % pattern == 0 else "sliding_attention"
            for i in range(hf["num_hidden_layers"])
        ],
    )
    hf.setdefault("attn_logit_softcapping", None)
    hf.setdefault("final_logit_softcapping", None)
    cfg = gemma2.build_config(hf)
    _, cfg.rope_scaling = rope_settings(hf)
    cfg.rotary_base_local = local_base
    cfg.qk_norm = True
    cfg.original_architecture = "Gemma3ForCausalLM"
    return cfg


_PREFIX = r"(?:model\.language_model\.|language_model\.model\.|model\.)?"
_L = _PREFIX + r"layers\.(?P<i>\d+)\."


def _with_prefix(rule: WeightRule) -> WeightRule:
    pattern = rule.pattern.replace(r"(?:model\.)?", _PREFIX)
    return dataclasses.replace(rule, pattern=pattern)


RULES = (
    WeightRule(_L + r"self_attn\.q_norm\.weight", ("blocks.{i}.attn.q_norm.w",), same),
    WeightRule(_L + r"self_attn\.k_norm\.weight", ("blocks.{i}.attn.k_norm.w",), same),
    *(_with_prefix(rule) for rule in gemma2.NORM_RULES + gemma2.OTHER_RULES),
)

FAMILY = Family(
    name="gemma3",
    architectures=("Gemma3ForCausalLM", "Gemma3ForConditionalGeneration", "Gemma3TextModel"),
    model_types=("gemma3_text", "gemma3"),
    build_config=build_config,
    rules=RULES,
    ignore=(
        r"(?:model\.)?vision_tower\..*",
        r"(?:model\.)?multi_modal_projector\..*",
        _L + r"self_attn\.rotary_emb(?:_local)?\.inv_freq",
    ),
)
