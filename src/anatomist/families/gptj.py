"""GPT-J (GPTJForCausalLM): a parallel block with one shared LayerNorm, GPT-J-style rotary.

What differs from GPT-NeoX: the attention and the MLP read the *same* normalized input
(``ln_1``; we load it as both ln1 and ln2), rotary pairs neighbouring features ``(2i, 2i+1)``
of the first ``rotary_dim`` features of each head, always with base 10000, q/k/v/out
projections are separate and bias-free, and the output embedding has a bias.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from anatomist.config import TransformerConfig
from anatomist.families.base import (
    Family,
    WeightRule,
    output_weight,
    query_weight,
    same,
    transpose,
)


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    d_model, n_heads = hf["n_embd"], hf["n_head"]
    d_head = d_model // n_heads
    rotary_dim = hf.get("rotary_dim")
    if rotary_dim is None and n_heads > 1:
        # HF then builds rotary tables over the whole d_model and cannot apply them per head.
        raise ValueError("GPT-J with rotary_dim=None and several heads is not a runnable model.")
    return TransformerConfig(
        n_layers=hf["n_layer"],
        d_model=d_model,
        n_ctx=hf.get("n_positions", 2048),
        d_head=d_head,
        n_heads=n_heads,
        d_mlp=hf.get("n_inner") or 4 * d_model,
        d_vocab=hf["vocab_size"],
        act_fn=hf.get("activation_function", "gelu_new"),
        normalization_type="LN",
        eps=hf.get("layer_norm_epsilon", 1e-5),
        parallel_attn_mlp=True,
        positional_embedding_type="rotary",
        rotary_dim=rotary_dim or d_head,  # None: the whole (single) head rotates
        rotary_base=10000.0,
        rotary_adjacent_pairs=True,
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        original_architecture="GPTJForCausalLM",
    )


def shared_norm(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    # One LayerNorm feeds both attention and MLP.
    return (t, t)


_B = r"(?:transformer\.)?h\.(?P<i>\d+)\."
_A = "blocks.{i}.attn."

FAMILY = Family(
    name="gptj",
    architectures=("GPTJForCausalLM",),
    model_types=("gptj",),
    build_config=build_config,
    rules=(
        WeightRule(r"(?:transformer\.)?wte\.weight", ("embed.W_E",), same),
        WeightRule(_B + r"ln_1\.weight", ("blocks.{i}.ln1.w", "blocks.{i}.ln2.w"), shared_norm),
        WeightRule(_B + r"ln_1\.bias", ("blocks.{i}.ln1.b", "blocks.{i}.ln2.b"), shared_norm),
        WeightRule(_B + r"attn\.q_proj\.weight", (_A + "W_Q",), query_weight),
        WeightRule(_B + r"attn\.k_proj\.weight", (_A + "W_K",), query_weight),
        WeightRule(_B + r"attn\.v_proj\.weight", (_A + "W_V",), query_weight),
        WeightRule(_B + r"attn\.out_proj\.weight", (_A + "W_O",), output_weight),
        WeightRule(_B + r"mlp\.fc_in\.weight", ("blocks.{i}.mlp.W_in",), transpose),
        WeightRule(_B + r"mlp\.fc_in\.bias", ("blocks.{i}.mlp.b_in",), same),
        WeightRule(_B + r"mlp\.fc_out\.weight", ("blocks.{i}.mlp.W_out",), transpose),
        WeightRule(_B + r"mlp\.fc_out\.bias", ("blocks.{i}.mlp.b_out",), same),
        WeightRule(r"(?:transformer\.)?ln_f\.weight", ("ln_final.w",), same),
        WeightRule(r"(?:transformer\.)?ln_f\.bias", ("ln_final.b",), same),
        WeightRule(r"lm_head\.weight", ("unembed.W_U",), transpose),
        WeightRule(r"lm_head\.bias", ("unembed.b_U",), same),
    ),
    ignore=(_B + r"attn\.(?:masked_)?bias",),
)
