"""OLMo (OlmoForCausalLM, OLMo 1): Llama with a non-parametric LayerNorm.

What differs from Llama: every norm is a LayerNorm WITHOUT weight or bias (mean-centred, eps fixed
at 1e-5), which is the native ``LNPre``; the checkpoint has no norm tensors at all. Rotary (halves
pairing), SwiGLU, optional grouped-query attention and attention biases, as Llama. ``clip_qkv``
(clamping q, k and v elementwise after projection) has no native counterpart and is refused.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families import llama
from anatomist.families.base import Family, rope_settings


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    if hf.get("clip_qkv") is not None:
        raise NotImplementedError(
            f"olmo: clip_qkv={hf['clip_qkv']} (clamping q, k and v after projection) is not "
            "supported by the native model."
        )
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    d_head = hf.get("head_dim") or d_model // n_heads
    theta, scaling = rope_settings(hf)
    return TransformerConfig(
        n_layers=hf["num_hidden_layers"],
        d_model=d_model,
        n_ctx=hf.get("max_position_embeddings", 2048),
        d_head=d_head,
        n_heads=n_heads,
        n_key_value_heads=hf.get("num_key_value_heads") or n_heads,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        act_fn=hf.get("hidden_act", "silu"),
        gated_mlp=True,
        normalization_type="LNPre",  # OlmoLayerNorm: no weight, no bias
        eps=1e-5,  # hard-coded in OlmoLayerNorm
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        rotary_base=theta,
        rope_scaling=scaling,
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        original_architecture="OlmoForCausalLM",
    )


FAMILY = Family(
    name="olmo",
    architectures=("OlmoForCausalLM", "OlmoModel"),
    model_types=("olmo",),
    build_config=build_config,
    rules=llama.RULES,  # same tensor names; the norm rules never match (no norm tensors)
    ignore=(r"(?:model\.)?layers\.\d+\.self_attn\.rotary_emb\.inv_freq",),
)
