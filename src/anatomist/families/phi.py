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
    kv_bias,
    kv_weight,
    output_weight,
    query_bias,
    query_weight,
    same,
    transpose,
)
from anatomist.families.gpt_neox import partial_rotary
from anatomist.families.gptj import shared_norm


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    if hf.get("model_type", "phi") != "phi":
        raise NotImplementedError(
            f"model_type {hf['model_type']!r}: this is Microsoft's original remote-code Phi "
            "format (MixFormer names); use a revision converted to transformers' 'phi' format."
        )
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    d_head = hf.get("head_dim") or d_model // n_heads
    qk_layernorm = bool(hf.get("qk_layernorm", False))
    if qk_layernorm and d_head != d_model // n_heads:
        raise NotImplementedError(
            f"Phi with qk_layernorm=True and head_dim={d_head} != hidden_size / "
            "num_attention_heads does not run in transformers (its q/k LayerNorms are "
            "hidden_size / num_attention_heads wide)."
        )
    rotary_dim, theta, scaling = partial_rotary(
        hf, d_head, "partial_rotary_factor", "rope_theta", 0.5
    )
    return TransformerConfig(
        n_layers=hf["num_hidden_layers"],
        d_model=d_model,
        n_ctx=hf.get("max_position_embeddings", 2048),
        d_head=d_head,
        n_heads=n_heads,
        n_key_value_heads=hf.get("num_key_value_heads") or n_heads,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        act_fn=hf.get("hidden_act", "gelu_new"),
        normalization_type="LN",
        eps=hf.get("layer_norm_eps", 1e-5),
        parallel_attn_mlp=True,
        qk_norm=qk_layernorm,
        qk_norm_type="LN",
        positional_embedding_type="rotary",
        rotary_dim=rotary_dim,
        rotary_base=theta,
        rope_scaling=scaling,
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        original_architecture="PhiForCausalLM",
    )


_L = r"(?:model\.)?layers\.(?P<i>\d+)\."
_A = "blocks.{i}.attn."

FAMILY = Family(
    name="phi",
    architectures=("PhiForCausalLM",),
    model_types=("phi",),
    build_config=build_config,
    rules=(
        WeightRule(r"(?:model\.)?embed_tokens\.weight", ("embed.W_E",), same),
        WeightRule(
            _L + r"input_layernorm\.weight", ("blocks.{i}.ln1.w", "blocks.{i}.ln2.w"), shared_norm
        ),
        WeightRule(
            _L + r"input_layernorm\.bias", ("blocks.{i}.ln1.b", "blocks.{i}.ln2.b"), shared_norm
        ),
        WeightRule(_L + r"self_attn\.q_proj\.weight", (_A + "W_Q",), query_weight),
        WeightRule(_L + r"self_attn\.k_proj\.weight", (_A + "{kv}W_K",), kv_weight),
        WeightRule(_L + r"self_attn\.v_proj\.weight", (_A + "{kv}W_V",), kv_weight),
        WeightRule(_L + r"self_attn\.q_proj\.bias", (_A + "b_Q",), query_bias),
        WeightRule(_L + r"self_attn\.k_proj\.bias", (_A + "{kv}b_K",), kv_bias),
        WeightRule(_L + r"self_attn\.v_proj\.bias", (_A + "{kv}b_V",), kv_bias),
        WeightRule(_L + r"self_attn\.(?P<qk>[qk])_layernorm\.weight", (_A + "{qk}_norm.w",), same),
        WeightRule(_L + r"self_attn\.(?P<qk>[qk])_layernorm\.bias", (_A + "{qk}_norm.b",), same),
        WeightRule(_L + r"self_attn\.dense\.weight", (_A + "W_O",), output_weight),
        WeightRule(_L + r"self_attn\.dense\.bias", (_A + "b_O",), same),
        WeightRule(_L + r"mlp\.fc1\.weight", ("blocks.{i}.mlp.W_in",), transpose),
        WeightRule(_L + r"mlp\.fc1\.bias", ("blocks.{i}.mlp.b_in",), same),
        WeightRule(_L + r"mlp\.fc2\.weight", ("blocks.{i}.mlp.W_out",), transpose),
        WeightRule(_L + r"mlp\.fc2\.bias", ("blocks.{i}.mlp.b_out",), same),
        WeightRule(r"(?:model\.)?final_layernorm\.weight", ("ln_final.w",), same),
        WeightRule(r"(?:model\.)?final_layernorm\.bias", ("ln_final.b",), same),
        WeightRule(r"lm_head\.weight", ("unembed.W_U",), transpose),
        WeightRule(r"lm_head\.bias", ("unembed.b_U",), same),
    ),
    ignore=(_L + r"self_attn\.rotary_emb\.inv_freq",),
)
