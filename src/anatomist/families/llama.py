"""Llama (LlamaForCausalLM): RMSNorm, rotary (with rope scaling), SwiGLU, grouped-query attention.

Also the base that many later families (Mistral, Qwen2, ...) describe themselves as a diff on:
`llama_style_config` reads config.json the way LlamaConfig names it and takes what a family does
differently as `TransformerConfig` fields; `llama_rope` is the rotary reader of families whose
rotary turns the whole head; `RULES` are Llama's tensor names.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.base import (
    Family,
    WeightRule,
    head_size,
    linear_rules,
    mlp_rules,
    output_weight,
    qkv_rules,
    rope_settings,
    same,
    transpose,
)

# Reads (rope theta, rope scaling) from a config.json dict.
RopeReader = Callable[[dict[str, Any]], tuple[float, dict[str, Any] | None]]


def head_dim(hf: dict[str, Any], default: int | None = None) -> int:
    """`head_dim`, or hidden_size / num_attention_heads where it is null (or absent and the config
    class has no `default` of its own)."""
    d_head: int | None = hf.get("head_dim", default)
    if d_head:
        return d_head
    # transformers rounds down here (LlamaConfig), so a width the heads do not divide is legal
    return head_size(
        hf["hidden_size"], hf["num_attention_heads"], "hidden_size", "num_attention_heads", False
    )


def llama_rope(
    hf: dict[str, Any], default_theta: float = 10000.0
) -> tuple[float, dict[str, Any] | None]:
    """rope theta and scaling for Llama-style (half-split, full head) rotary, or an error for
    partial rotary (scaling types are checked by `rope_settings`)."""
    theta, scaling = rope_settings(hf, default_theta=default_theta)
    params = {**(hf.get("rope_parameters") or {}), **(hf.get("rope_scaling") or {})}
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
    if partial is not None and float(partial) != 1.0:
        raise NotImplementedError(
            f"partial_rotary_factor={partial} is not supported for this architecture "
            "(its rotary embedding rotates the whole head)."
        )
    return theta, scaling


def llama_style_config(
    hf: dict[str, Any], architecture: str, *, rope: RopeReader = rope_settings, **overrides: Any
) -> TransformerConfig:
    """The `TransformerConfig` of a checkpoint whose config.json uses LlamaConfig's keys and
    defaults: sizes, `head_dim`, grouped-query heads, a SwiGLU MLP `intermediate_size` wide,
    RMSNorm (`rms_norm_eps`), full-head rotary, untied embeddings. `overrides` are the
    `TransformerConfig` fields a family sets differently (its own defaults included).

    `rope` reads theta and scaling (`llama_rope` also refuses partial rotary) unless `overrides`
    give `rotary_base`; `rotary_dim` follows `d_head` unless overridden; `intermediate_size` is
    read only when `overrides` do not give `d_mlp` (mixtures of experts size their own)."""
    n_heads = hf["num_attention_heads"]
    d_head = overrides.get("d_head") or head_dim(hf)
    if "rotary_base" not in overrides:
        overrides["rotary_base"], overrides["rope_scaling"] = rope(hf)
    if "d_mlp" not in overrides:
        overrides["d_mlp"] = hf["intermediate_size"]
    settings: dict[str, Any] = dict(
        n_layers=hf["num_hidden_layers"],
        d_model=hf["hidden_size"],
        n_ctx=hf.get("max_position_embeddings", 2048),
        d_head=d_head,
        n_heads=n_heads,
        n_key_value_heads=hf.get("num_key_value_heads") or n_heads,
        d_vocab=hf["vocab_size"],
        act_fn=hf.get("hidden_act", "silu"),
        gated_mlp=True,
        normalization_type="RMS",
        eps=hf.get("rms_norm_eps", 1e-6),
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        original_architecture=architecture,
    )
    return TransformerConfig(**{**settings, **overrides})


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    return llama_style_config(hf, "LlamaForCausalLM")


_L = r"(?:model\.)?layers\.(?P<i>\d+)\."
_A = "blocks.{i}.attn."

# The projections' biases exist only under attention_bias / mlp_bias, hence optional.
RULES = (
    WeightRule(r"(?:model\.)?embed_tokens\.weight", ("embed.W_E",), same),
    WeightRule(_L + r"input_layernorm\.weight", ("blocks.{i}.ln1.w",), same),
    *qkv_rules(_L + r"self_attn\.", optional_bias=True),
    *linear_rules(
        _L + r"self_attn\.o_proj", _A + "W_O", _A + "b_O", output_weight, optional_bias=True
    ),
    WeightRule(_L + r"post_attention_layernorm\.weight", ("blocks.{i}.ln2.w",), same),
    *linear_rules(
        _L + r"mlp\.gate_proj", "blocks.{i}.mlp.W_gate", "blocks.{i}.mlp.b_gate", optional_bias=True
    ),
    *mlp_rules(_L + r"mlp\.up_proj", _L + r"mlp\.down_proj", optional_bias=True),
    WeightRule(r"(?:model\.)?norm\.weight", ("ln_final.w",), same),
    WeightRule(r"lm_head\.weight", ("unembed.W_U",), transpose),
)
# The query and key norms' weights, for families that norm them (Qwen3, OLMo 2, OLMoE, Cohere, ...).
QK_NORM_RULES = (
    WeightRule(_L + r"self_attn\.q_norm\.weight", ("blocks.{i}.attn.q_norm.w",), same),
    WeightRule(_L + r"self_attn\.k_norm\.weight", ("blocks.{i}.attn.k_norm.w",), same),
)
# Older checkpoints saved the rotary inverse frequencies, which the native rotary computes itself.
IGNORE = (_L + r"self_attn\.rotary_emb\.inv_freq",)

FAMILY = Family(
    name="llama",
    architectures=("LlamaForCausalLM", "LlamaModel"),
    model_types=("llama",),
    build_config=build_config,
    rules=RULES,
    ignore=IGNORE,
)
