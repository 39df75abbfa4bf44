"""GPT-2 (GPT2LMHeadModel): learned positions, LayerNorm, GELU (tanh), fused qkv in Conv1D layout.

Conv1D weights are stored [in, out], already the classic orientation. `gpt2_style_config` reads
GPT2Config's keys (shared with GPTBigCode), and `gpt2_rules` are GPT-2's tensor names around a
family's own attention (shared with GPT-Neo and GPTBigCode).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from anatomist.config import TransformerConfig
from anatomist.families.base import (
    Family,
    Transform,
    WeightRule,
    head_size,
    mlp_rules,
    norm_rules,
    same,
    stored_as,
    transpose,
)


def gpt2_style_config(hf: dict[str, Any], architecture: str, **overrides: Any) -> TransformerConfig:
    """The `TransformerConfig` of a checkpoint whose config.json uses GPT2Config's keys and
    defaults (``n_embd``, ``n_head``, ``n_layer``, ``n_positions``, ``n_inner``, ...): learned
    positions, LayerNorm, an MLP 4 * d_model wide, tied embeddings. `overrides` are the
    `TransformerConfig` fields a family sets differently."""
    d_model, n_heads = hf["n_embd"], hf["n_head"]
    settings: dict[str, Any] = dict(
        n_layers=hf["n_layer"],
        d_model=d_model,
        n_ctx=hf["n_positions"],
        d_head=head_size(d_model, n_heads, "n_embd", "n_head"),
        n_heads=n_heads,
        d_mlp=hf.get("n_inner") or 4 * d_model,
        d_vocab=hf["vocab_size"],
        act_fn=hf.get("activation_function", "gelu_new"),
        normalization_type="LN",
        eps=hf.get("layer_norm_epsilon", 1e-5),
        use_attn_scale=hf.get("scale_attn_weights", True),
        positional_embedding_type="standard",
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        original_architecture=architecture,
    )
    return TransformerConfig(**{**settings, **overrides})


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    return gpt2_style_config(
        hf,
        "GPT2LMHeadModel",
        scale_attn_by_inverse_layer_idx=hf.get("scale_attn_by_inverse_layer_idx", False),
    )


# three [n_heads, d_model, d_head] <- c_attn [d_model, 3 * n_heads * d_head] (Conv1D: [in, out])
@stored_as(lambda shapes, cfg: (shapes[0][1], sum(s[0] * s[2] for s in shapes)))
def split_qkv_weight(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    # c_attn.weight [d_model, 3 * d_model] -> three [n_heads, d_model, d_head]
    return tuple(
        w.reshape(cfg.d_model, cfg.n_heads, cfg.d_head).permute(1, 0, 2)
        for w in t.split(cfg.n_heads * cfg.d_head, dim=1)
    )


@stored_as(lambda shapes, cfg: (sum(s[0] * s[1] for s in shapes),))
def split_qkv_bias(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    return tuple(b.reshape(cfg.n_heads, cfg.d_head) for b in t.split(cfg.n_heads * cfg.d_head))


@stored_as(lambda shapes, cfg: (shapes[0][0] * shapes[0][1], shapes[0][2]))
def attn_out_weight(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    # c_proj.weight [n_heads * d_head, d_model] -> W_O [n_heads, d_head, d_model]
    return (t.reshape(cfg.n_heads, cfg.d_head, cfg.d_model),)


_T = r"(?:transformer\.)?"
_B = _T + r"h\.(?P<i>\d+)\."
_A = "blocks.{i}.attn."


def gpt2_rules(attention: tuple[WeightRule, ...], mlp: Transform) -> tuple[WeightRule, ...]:
    """GPT-2's tensor names (``wte``, ``wpe``, ``h.{i}.ln_1``/``ln_2``, ``mlp.c_fc``/``c_proj``,
    ``ln_f``, ``lm_head``) around a family's own `attention` rules; `mlp` turns the stored MLP
    weights into [in, out] (`same` for GPT-2's Conv1D, `transpose` for nn.Linear)."""
    return (
        WeightRule(_T + r"wte\.weight", ("embed.W_E",), same),
        WeightRule(_T + r"wpe\.weight", ("pos_embed.W_pos",), same),
        *norm_rules(_B + "ln_1", "blocks.{i}.ln1"),
        *attention,
        *norm_rules(_B + "ln_2", "blocks.{i}.ln2"),
        *mlp_rules(_B + r"mlp\.c_fc", _B + r"mlp\.c_proj", mlp),
        *norm_rules(_T + "ln_f", "ln_final"),
        WeightRule(r"lm_head\.weight", ("unembed.W_U",), transpose),
    )


ATTENTION_RULES = (
    WeightRule(
        _B + r"attn\.c_attn\.weight", (_A + "W_Q", _A + "W_K", _A + "W_V"), split_qkv_weight
    ),
    WeightRule(_B + r"attn\.c_attn\.bias", (_A + "b_Q", _A + "b_K", _A + "b_V"), split_qkv_bias),
    WeightRule(_B + r"attn\.c_proj\.weight", (_A + "W_O",), attn_out_weight),
    WeightRule(_B + r"attn\.c_proj\.bias", (_A + "b_O",), same),
)

FAMILY = Family(
    name="gpt2",
    architectures=("GPT2LMHeadModel", "GPT2Model"),
    model_types=("gpt2",),
    build_config=build_config,
    rules=gpt2_rules(ATTENTION_RULES, mlp=same),  # Conv1D: stored [in, out]
    ignore=(_B + r"attn\.(?:masked_)?bias",),
)
