"""Mistral (MistralForCausalLM): Llama with sliding-window attention in every layer.

Differences from Llama: every layer attends to at most the last `sliding_window` keys (None, as
in Mistral v0.2 and later, means full attention); no attention or MLP biases. The weight names are
Llama's. A `layer_types` entry in the config is ignored, as transformers ignores it for this class.

`llama_rope` is the rotary check shared with the other Llama-derived families (Qwen2, Qwen3,
Gemma): theta and scaling, refusing what the native rotary does not compute.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.base import Family, rope_settings
from anatomist.families.llama import _L, RULES


def llama_rope(hf: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """rope theta and scaling for Llama-style (half-split, full head) rotary, or an error for
    partial rotary (scaling types are checked by `rope_settings`)."""
    theta, scaling = rope_settings(hf)
    params = {**(hf.get("rope_parameters") or {}), **(hf.get("rope_scaling") or {})}
    partial = params.get("partial_rotary_factor", hf.get("partial_rotary_factor"))
    if partial is not None and float(partial) != 1.0:
        raise NotImplementedError(
            f"partial_rotary_factor={partial} is not supported for this architecture "
            "(its rotary embedding rotates the whole head)."
        )
    return theta, scaling


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    d_head = hf.get("head_dim") or d_model // n_heads
    theta, scaling = llama_rope(hf)
    return TransformerConfig(
        n_layers=hf["num_hidden_layers"],
        d_model=d_model,
        n_ctx=hf.get("max_position_embeddings", 4096 * 32),
        d_head=d_head,
        n_heads=n_heads,
        n_key_value_heads=hf.get("num_key_value_heads") or n_heads,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        act_fn=hf.get("hidden_act", "silu"),
        gated_mlp=True,
        normalization_type="RMS",
        eps=hf.get("rms_norm_eps", 1e-6),
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        rotary_base=theta,
        rope_scaling=scaling,
        # transformers' default (4096) applies when the key is absent; null means full attention.
        sliding_window=hf.get("sliding_window", 4096),
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        original_architecture="MistralForCausalLM",
    )


FAMILY = Family(
    name="mistral",
    architectures=("MistralForCausalLM", "MistralModel"),
    model_types=("mistral",),
    build_config=build_config,
    rules=RULES,
    ignore=(_L + r"self_attn\.rotary_emb\.inv_freq",),
)
