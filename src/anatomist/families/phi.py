"""Phi (PhiForCausalLM; Phi-1, Phi-1.5, Phi-2): GPT-J's parallel block with Llama's names.

What differs from GPT-J: separate q/k/v/dense projections that all carry biases (grouped-query
attention allowed), rotary pairs features as halves (NeoX/Llama style) on the first
``partial_rotary_factor`` of each head, with a configurable base; the one shared LayerNorm is
``input_layernorm``; the output embedding has a bias. With ``qk_layernorm`` each head's query
and key pass through a LayerNorm over d_head with weight and bias, shared by the heads
(``q_layernorm``/``k_layernorm`` -> ``attn.q_norm``/``k_norm``), before rotary.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.base import (
    Family,
    WeightRule,
    linear_rules,
    mlp_rules,
    norm_rules,
    output_weight,
    qkv_rules,
    same,
    shared_norm,
)
from anatomist.families.gpt_neox import partial_rotary_settings
from anatomist.families.llama import _L, IGNORE, head_dim, llama_style_config


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    if hf.get("model_type", "phi") != "phi":
        raise NotImplementedError(
            f"model_type {hf['model_type']!r}: this is Microsoft's original remote-code Phi "
            "format (MixFormer names); use a revision converted to transformers' 'phi' format."
        )
    d_head = head_dim(hf)
    qk_layernorm = bool(hf.get("qk_layernorm", False))
    if qk_layernorm and d_head != hf["hidden_size"] // hf["num_attention_heads"]:
        raise NotImplementedError(
            f"Phi with qk_layernorm=True and head_dim={d_head} != hidden_size / "
            "num_attention_heads does not run in transformers (its q/k LayerNorms are "
            "hidden_size / num_attention_heads wide)."
        )
    return llama_style_config(
        hf,
        "PhiForCausalLM",
        act_fn=hf.get("hidden_act", "gelu_new"),
        gated_mlp=False,
        normalization_type="LN",
        eps=hf.get("layer_norm_eps", 1e-5),
        parallel_attn_mlp=True,
        qk_norm=qk_layernorm,
        qk_norm_type="LN",
        **partial_rotary_settings(hf, d_head, "partial_rotary_factor", "rope_theta", 0.5),
    )


_A = "blocks.{i}.attn."

FAMILY = Family(
    name="phi",
    architectures=("PhiForCausalLM",),
    model_types=("phi",),
    build_config=build_config,
    rules=(
        WeightRule(r"(?:model\.)?embed_tokens\.weight", ("embed.W_E",), same),
        *norm_rules(
            _L + "input_layernorm", "blocks.{i}.ln1", "blocks.{i}.ln2", transform=shared_norm
        ),
        *qkv_rules(_L + r"self_attn\."),
        *norm_rules(_L + r"self_attn\.(?P<qk>[qk])_layernorm", _A + "{qk}_norm"),
        *linear_rules(_L + r"self_attn\.dense", _A + "W_O", _A + "b_O", output_weight),
        *mlp_rules(_L + r"mlp\.fc1", _L + r"mlp\.fc2"),
        *norm_rules(r"(?:model\.)?final_layernorm", "ln_final"),
        *linear_rules(r"lm_head", "unembed.W_U", "unembed.b_U"),
    ),
    ignore=IGNORE,
)
