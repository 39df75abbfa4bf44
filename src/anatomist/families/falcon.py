"""Falcon (FalconForCausalLM; Falcon-7B/40B/180B, Falcon2-11B, Falcon-RW): rotary or ALiBi.

A GPT-NeoX-like LayerNorm model with full-width rotary (halves pairing, as Llama), an ungated
MLP (GELU by default), optional biases on every linear layer (``bias``) and a tied output
embedding by default. Three block layouts:

- 7B (``parallel_attn``, multi-query): a parallel block with one shared ``input_layernorm``
  (loaded as both ln1 and ln2) and a single key/value head;
- ``new_decoder_architecture`` (40B/180B): a parallel block with ``ln_attn`` and ``ln_mlp``
  (or one shared ``input_layernorm`` when ``num_ln_in_parallel_attn`` is 1, Falcon2-11B) and
  grouped-query attention with ``num_kv_heads``;
- ``parallel_attn=False``: a sequential block (``input_layernorm``, ``post_attention_layernorm``).

Every layout fuses q, k and v into ``query_key_value`` grouped by key/value head: per group,
the group's query heads, then its key head, then its value head (``FalconAttention._split_heads``;
multi-query is one group, plain multi-head attention is one query head per group).

ALiBi models (``alibi=True``, Falcon-RW-1B/7B) use ALiBi instead of rotary, differently from
BLOOM: the bias is added to the raw scores before they are divided by sqrt(d_head),
``(q.k + slope * pos) / sqrt(d_head)``, and ``slope * pos`` is computed in bfloat16 (the
reference code's rounding, kept by transformers). transformers' eager attention (used when it
returns attentions) adds the bias a second time; we match its default SDPA path and the
reference code.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from anatomist.config import TransformerConfig
from anatomist.families.base import (
    Family,
    WeightRule,
    head_size,
    input_norm,
    mlp_rules,
    norm_rules,
    rope_settings,
    same,
    transpose,
)
from anatomist.families.gpt_neox import attn_out_weight


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    alibi = bool(hf.get("alibi", False))
    d_model = hf["n_embed"] if "n_embed" in hf else hf["hidden_size"]
    n_heads = hf["num_attention_heads"]
    new_arch = bool(hf.get("new_decoder_architecture", False))
    parallel = bool(hf.get("parallel_attn", True))
    n_norms = hf.get("num_ln_in_parallel_attn")
    if new_arch:
        if not parallel:
            raise NotImplementedError(
                "Falcon with new_decoder_architecture=True and parallel_attn=False does not run "
                "in transformers (its decoder layer lacks the norms it reads)."
            )
        n_kv = hf.get("num_kv_heads") or n_heads
    else:
        if parallel and n_norms == 2:
            raise NotImplementedError(
                "Falcon with num_ln_in_parallel_attn=2 needs new_decoder_architecture=True."
            )
        n_kv = 1 if hf.get("multi_query", True) else (hf.get("num_kv_heads") or n_heads)
        if n_kv not in (1, n_heads):
            raise NotImplementedError(
                "Falcon without new_decoder_architecture and multi_query=False needs "
                f"num_kv_heads == num_attention_heads (got {n_kv} and {n_heads})."
            )
    theta, scaling = (10000.0, None) if alibi else rope_settings(hf)  # ALiBi: no rotary
    return TransformerConfig(
        n_layers=hf["num_hidden_layers"],
        d_model=d_model,
        n_ctx=hf.get("max_position_embeddings", 2048),
        d_head=head_size(d_model, n_heads, "hidden_size", "num_attention_heads"),
        n_heads=n_heads,
        n_key_value_heads=n_kv,
        d_mlp=hf.get("ffn_hidden_size") or 4 * d_model,
        d_vocab=hf["vocab_size"],
        act_fn=hf.get("activation", "gelu"),
        normalization_type="LN",
        eps=hf.get("layer_norm_epsilon", 1e-5),
        parallel_attn_mlp=parallel,
        positional_embedding_type="alibi" if alibi else "rotary",
        rotary_base=theta,
        rope_scaling=scaling,
        alibi_scaled_with_scores=alibi,
        alibi_bias_bfloat16=alibi,
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        original_architecture="FalconForCausalLM",
    )


def _groups(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, Tensor, Tensor]:
    """Rows [kv * (group + 2) * d_head, ...] -> q [h, d_head, ...], k and v [kv, d_head, ...]."""
    kv, group = cfg.n_kv_heads, cfg.n_heads // cfg.n_kv_heads
    rows = t.view(kv, group + 2, cfg.d_head, *t.shape[1:])
    q = rows[:, :group].reshape(cfg.n_heads, cfg.d_head, *t.shape[1:])
    return q, rows[:, group], rows[:, group + 1]


def split_qkv_weight(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    return tuple(w.transpose(1, 2) for w in _groups(t, cfg))  # [heads, d_model, d_head]


def split_qkv_bias(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    return _groups(t, cfg)


_B = r"(?:transformer\.)?h\.(?P<i>\d+)\."
_A = "blocks.{i}.attn."
_QKV = (_A + "W_Q", _A + "{kv}W_K", _A + "{kv}W_V")
_QKV_BIAS = (_A + "b_Q", _A + "{kv}b_K", _A + "{kv}b_V")


FAMILY = Family(
    name="falcon",
    architectures=("FalconForCausalLM", "FalconModel"),
    model_types=("falcon",),
    build_config=build_config,
    rules=(
        WeightRule(r"(?:transformer\.)?word_embeddings\.weight", ("embed.W_E",), same),
        *norm_rules(
            _B + "input_layernorm", "blocks.{i}.ln1", "blocks.{i}.ln2", transform=input_norm
        ),
        *norm_rules(_B + "ln_attn", "blocks.{i}.ln1"),
        *norm_rules(_B + "ln_mlp", "blocks.{i}.ln2"),
        *norm_rules(_B + "post_attention_layernorm", "blocks.{i}.ln2"),
        WeightRule(_B + r"self_attention\.query_key_value\.weight", _QKV, split_qkv_weight),
        # the projections' biases exist only under bias=True
        WeightRule(_B + r"self_attention\.query_key_value\.bias", _QKV_BIAS, split_qkv_bias, True),
        WeightRule(_B + r"self_attention\.dense\.weight", (_A + "W_O",), attn_out_weight),
        WeightRule(_B + r"self_attention\.dense\.bias", (_A + "b_O",), same, True),
        *mlp_rules(_B + r"mlp\.dense_h_to_4h", _B + r"mlp\.dense_4h_to_h", optional_bias=True),
        *norm_rules(r"(?:transformer\.)?ln_f", "ln_final"),
        WeightRule(r"lm_head\.weight", ("unembed.W_U",), transpose),
    ),
)
