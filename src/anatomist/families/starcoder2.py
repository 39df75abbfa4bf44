"""StarCoder2 (Starcoder2ForCausalLM): Llama-style attention with GPT-2-style everything else.

What differs from Llama: the norms are LayerNorms with weight AND bias (``norm_epsilon``); every
linear layer has a bias when ``use_bias`` (the default); the MLP is NOT gated (``c_fc`` then
``c_proj``, tanh GELU); every layer uses a sliding window when ``sliding_window`` is set;
embeddings are tied by default. Rotary (halves pairing) and grouped-query attention as Llama.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families import llama
from anatomist.families.base import Family, WeightRule, rope_settings, same, transpose


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    d_head = hf.get("head_dim") or d_model // n_heads
    theta, scaling = rope_settings(hf)
    return TransformerConfig(
        n_layers=hf["num_hidden_layers"],
        d_model=d_model,
        n_ctx=hf.get("max_position_embeddings", 4096),
        d_head=d_head,
        n_heads=n_heads,
        n_key_value_heads=hf.get("num_key_value_heads") or n_heads,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        act_fn=hf.get("hidden_act", "gelu_pytorch_tanh"),
        normalization_type="LN",
        eps=hf.get("norm_epsilon", 1e-5),
        sliding_window=hf.get("sliding_window"),  # every layer, when set
        positional_embedding_type="rotary",
        rotary_dim=d_head,
        rotary_base=theta,
        rope_scaling=scaling,
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        original_architecture="Starcoder2ForCausalLM",
    )


_L = r"(?:model\.)?layers\.(?P<i>\d+)\."

FAMILY = Family(
    name="starcoder2",
    architectures=("Starcoder2ForCausalLM", "Starcoder2Model"),
    model_types=("starcoder2",),
    build_config=build_config,
    rules=(
        *llama.RULES,  # embeddings, q/k/v/o weights and biases, norm weights, lm_head
        WeightRule(_L + r"input_layernorm\.bias", ("blocks.{i}.ln1.b",), same),
        WeightRule(_L + r"post_attention_layernorm\.bias", ("blocks.{i}.ln2.b",), same),
        WeightRule(_L + r"mlp\.c_fc\.weight", ("blocks.{i}.mlp.W_in",), transpose),
        WeightRule(_L + r"mlp\.c_fc\.bias", ("blocks.{i}.mlp.b_in",), same),
        WeightRule(_L + r"mlp\.c_proj\.weight", ("blocks.{i}.mlp.W_out",), transpose),
        WeightRule(_L + r"mlp\.c_proj\.bias", ("blocks.{i}.mlp.b_out",), same),
        WeightRule(r"(?:model\.)?norm\.bias", ("ln_final.b",), same),
    ),
    ignore=(_L + r"self_attn\.rotary_emb\.inv_freq",),
)
