"""BLOOM (BloomForCausalLM): ALiBi instead of positions, and a LayerNorm after the embedding.

Otherwise a GPT-style block with GPT-NeoX's layer names (`gpt_neox.neox_layer_rules`): LayerNorm
with bias, fused ``query_key_value`` stored per head as ``[n_heads, 3, d_head]``,
tanh-approximated GELU, tied embeddings.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.base import Family, WeightRule, head_size, norm_rules, same, transpose
from anatomist.families.gpt_neox import neox_layer_rules


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    d_model = hf.get("hidden_size") or hf["n_embed"]
    n_heads = hf.get("n_head") or hf["num_attention_heads"]
    return TransformerConfig(
        n_layers=hf.get("n_layer") or hf["num_hidden_layers"],
        d_model=d_model,
        n_ctx=hf.get("seq_length") or 2048,  # ALiBi has no table; this only bounds to_tokens
        d_head=head_size(d_model, n_heads, "hidden_size", "n_head"),
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

FAMILY = Family(
    name="bloom",
    architectures=("BloomForCausalLM", "BloomModel"),
    model_types=("bloom",),
    build_config=build_config,
    rules=(
        WeightRule(_T + r"word_embeddings\.weight", ("embed.W_E",), same),
        *norm_rules(_T + "word_embeddings_layernorm", "ln_embed"),
        *neox_layer_rules(_B, "self_attention"),
        *norm_rules(_T + "ln_f", "ln_final"),
        WeightRule(r"lm_head\.weight", ("unembed.W_U",), transpose),
    ),
)
