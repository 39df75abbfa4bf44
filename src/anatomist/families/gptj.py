"""GPT-J (GPTJForCausalLM): a parallel block with one shared LayerNorm, GPT-J-style rotary.

What differs from GPT-NeoX: the attention and the MLP read the *same* normalized input
(``ln_1``; we load it as both ln1 and ln2), rotary pairs neighbouring features ``(2i, 2i+1)``
of the first ``rotary_dim`` features of each head, always with base 10000, q/k/v/out
projections are separate and bias-free, and the output embedding has a bias.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.base import (
    Family,
    WeightRule,
    head_size,
    linear_rules,
    mlp_rules,
    norm_rules,
    output_weight,
    qkv_rules,
    same,
    shared_norm,
)
from anatomist.families.gpt2 import _B, _T


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    d_model, n_heads = hf["n_embd"], hf["n_head"]
    d_head = head_size(d_model, n_heads, "n_embd", "n_head")
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


_A = "blocks.{i}.attn."

FAMILY = Family(
    name="gptj",
    architectures=("GPTJForCausalLM",),
    model_types=("gptj",),
    build_config=build_config,
    rules=(
        WeightRule(_T + r"wte\.weight", ("embed.W_E",), same),
        *norm_rules(_B + "ln_1", "blocks.{i}.ln1", "blocks.{i}.ln2", transform=shared_norm),
        *qkv_rules(_B + r"attn\.", biases=False),
        *linear_rules(_B + r"attn\.out_proj", _A + "W_O", transform=output_weight),
        *mlp_rules(_B + r"mlp\.fc_in", _B + r"mlp\.fc_out"),
        *norm_rules(_T + "ln_f", "ln_final"),
        *linear_rules(r"lm_head", "unembed.W_U", "unembed.b_U"),
    ),
    ignore=(_B + r"attn\.(?:masked_)?bias",),
)
