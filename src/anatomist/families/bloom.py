"""BLOOM (BloomForCausalLM): ALiBi instead of positions, and a LayerNorm after the embedding.

Otherwise a GPT-style block: LayerNorm with bias, fused ``query_key_value`` stored per head as
``[n_heads, 3, d_head]`` (the GPT-NeoX layout), tanh-approximated GELU, tied embeddings.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.base import Family, WeightRule, same, transpose
from anatomist.families.gpt_neox import attn_out_weight, split_qkv_bias, split_qkv_weight


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    d_model = hf.get("hidden_size") or hf["n_embed"]
    n_heads = hf.get("n_head") or hf["num_attention_heads"]
    return TransformerConfig(
        n_layers=hf.get("n_layer") or hf["num_hidden_layers"],
        d_model=d_model,
        n_ctx=hf.get("seq_length") or 2048,  # ALiBi has no table; this only bounds to_tokens
        d_head=d_model // n_heads,
        n_heads=n_heads,
        d_mlp=4 * d_model,
        d_vocab=hf["vocab_size"],
        act_fn="gelu_new",
        normalization_type="LN",
        eps=hf.get("layer_norm_epsilon", 1e-5),
        positional_embedding_type="alibi",
        post_embedding_norm=True,
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        original_architecture="BloomForCausalLM",
    )


_T = r"(?:transformer\.)?"
_B = _T + r"h\.(?P<i>\d+)\."
_A = "blocks.{i}.attn."

FAMILY = Family(
    name="bloom",
    architectures=("BloomForCausalLM", "BloomModel"),
    model_types=("bloom",),
    build_config=build_config,
    rules=(
        WeightRule(_T + r"word_embeddings\.weight", ("embed.W_E",), same),
        WeightRule(_T + r"word_embeddings_layernorm\.weight", ("ln_embed.w",), same),
        WeightRule(_T + r"word_embeddings_layernorm\.bias", ("ln_embed.b",), same),
        WeightRule(_B + r"input_layernorm\.weight", ("blocks.{i}.ln1.w",), same),
        WeightRule(_B + r"input_layernorm\.bias", ("blocks.{i}.ln1.b",), same),
        WeightRule(
            _B + r"self_attention\.query_key_value\.weight",
            (_A + "W_Q", _A + "W_K", _A + "W_V"),
            split_qkv_weight,
        ),
        WeightRule(
            _B + r"self_attention\.query_key_value\.bias",
            (_A + "b_Q", _A + "b_K", _A + "b_V"),
            split_qkv_bias,
        ),
        WeightRule(_B + r"self_attention\.dense\.weight", (_A + "W_O",), attn_out_weight),
        WeightRule(_B + r"self_attention\.dense\.bias", (_A + "b_O",), same),
        WeightRule(_B + r"post_attention_layernorm\.weight", ("blocks.{i}.ln2.w",), same),
        WeightRule(_B + r"post_attention_layernorm\.bias", ("blocks.{i}.ln2.b",), same),
        WeightRule(_B + r"mlp\.dense_h_to_4h\.weight", ("blocks.{i}.mlp.W_in",), transpose),
        WeightRule(_B + r"mlp\.dense_h_to_4h\.bias", ("blocks.{i}.mlp.b_in",), same),
        WeightRule(_B + r"mlp\.dense_4h_to_h\.weight", ("blocks.{i}.mlp.W_out",), transpose),
        WeightRule(_B + r"mlp\.dense_4h_to_h\.bias", ("blocks.{i}.mlp.b_out",), same),
        WeightRule(_T + r"ln_f\.weight", ("ln_final.w",), same),
        WeightRule(_T + r"ln_f\.bias", ("ln_final.b",), same),
        WeightRule(r"lm_head\.weight", ("unembed.W_U",), transpose),
    ),
)
