"""GPT-2 (GPT2LMHeadModel): learned positions, LayerNorm, GELU (tanh), fused qkv in Conv1D layout.

Conv1D weights are stored [in, out], already the classic orientation.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from anatomist.config import TransformerConfig
from anatomist.families.base import Family, WeightRule, same, transpose


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    d_model, n_heads = hf["n_embd"], hf["n_head"]
    return TransformerConfig(
        n_layers=hf["n_layer"],
        d_model=d_model,
        n_ctx=hf["n_positions"],
        d_head=d_model // n_heads,
        n_heads=n_heads,
        d_mlp=hf.get("n_inner") or 4 * d_model,
        d_vocab=hf["vocab_size"],
        act_fn=hf.get("activation_function", "gelu_new"),
        normalization_type="LN",
        eps=hf.get("layer_norm_epsilon", 1e-5),
        use_attn_scale=hf.get("scale_attn_weights", True),
        scale_attn_by_inverse_layer_idx=hf.get("scale_attn_by_inverse_layer_idx", False),
        positional_embedding_type="standard",
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        original_architecture="GPT2LMHeadModel",
    )


def split_qkv_weight(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    # c_attn.weight [d_model, 3 * d_model] -> three [n_heads, d_model, d_head]
    return tuple(
        w.reshape(cfg.d_model, cfg.n_heads, cfg.d_head).permute(1, 0, 2)
        for w in t.split(cfg.n_heads * cfg.d_head, dim=1)
    )


def split_qkv_bias(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    return tuple(b.reshape(cfg.n_heads, cfg.d_head) for b in t.split(cfg.n_heads * cfg.d_head))


def attn_out_weight(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    # c_proj.weight [n_heads * d_head, d_model] -> W_O [n_heads, d_head, d_model]
    return (t.reshape(cfg.n_heads, cfg.d_head, cfg.d_model),)


_B = r"(?:transformer\.)?h\.(?P<i>\d+)\."

FAMILY = Family(
    name="gpt2",
    architectures=("GPT2LMHeadModel", "GPT2Model"),
    model_types=("gpt2",),
    build_config=build_config,
    rules=(
        WeightRule(r"(?:transformer\.)?wte\.weight", ("embed.W_E",), same),
        WeightRule(r"(?:transformer\.)?wpe\.weight", ("pos_embed.W_pos",), same),
        WeightRule(_B + r"ln_1\.weight", ("blocks.{i}.ln1.w",), same),
        WeightRule(_B + r"ln_1\.bias", ("blocks.{i}.ln1.b",), same),
        WeightRule(
            _B + r"attn\.c_attn\.weight",
            ("blocks.{i}.attn.W_Q", "blocks.{i}.attn.W_K", "blocks.{i}.attn.W_V"),
            split_qkv_weight,
        ),
        WeightRule(
            _B + r"attn\.c_attn\.bias",
            ("blocks.{i}.attn.b_Q", "blocks.{i}.attn.b_K", "blocks.{i}.attn.b_V"),
            split_qkv_bias,
        ),
        WeightRule(_B + r"attn\.c_proj\.weight", ("blocks.{i}.attn.W_O",), attn_out_weight),
        WeightRule(_B + r"attn\.c_proj\.bias", ("blocks.{i}.attn.b_O",), same),
        WeightRule(_B + r"ln_2\.weight", ("blocks.{i}.ln2.w",), same),
        WeightRule(_B + r"ln_2\.bias", ("blocks.{i}.ln2.b",), same),
        WeightRule(_B + r"mlp\.c_fc\.weight", ("blocks.{i}.mlp.W_in",), same),
        WeightRule(_B + r"mlp\.c_fc\.bias", ("blocks.{i}.mlp.b_in",), same),
        WeightRule(_B + r"mlp\.c_proj\.weight", ("blocks.{i}.mlp.W_out",), same),
        WeightRule(_B + r"mlp\.c_proj\.bias", ("blocks.{i}.mlp.b_out",), same),
        WeightRule(r"(?:transformer\.)?ln_f\.weight", ("ln_final.w",), same),
        WeightRule(r"(?:transformer\.)?ln_f\.bias", ("ln_final.b",), same),
        WeightRule(r"lm_head\.weight", ("unembed.W_U",), transpose),
    ),
    ignore=(_B + r"attn\.(?:masked_)?bias",),
)
