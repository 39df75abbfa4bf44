"""BERT (BertModel, BertForMaskedLM, BertForPreTraining, BertForNextSentencePrediction): an
encoder, loaded by `HookedEncoder`.

What differs from the decoder families: attention is bidirectional (``causal=False``); the
embeddings add a learned token-type (segment) table to the word and position embeddings and
normalize the sum (``embed.ln``); blocks are post-LayerNorm (``ln1`` normalizes
``resid_pre + attn_out``, ``ln2`` normalizes ``normalized_resid_mid + mlp_out``); GELU is exact.
Masked-LM checkpoints add ``cls.predictions`` (dense + activation + LayerNorm, then the output
embedding, tied to the word embeddings by default), loaded as ``mlm_head`` and ``unembed``;
next-sentence checkpoints add the pooler (``pooler.dense``: dense + tanh of the first token) and
``cls.seq_relationship`` (2 logits), loaded as ``pooler`` and ``nsp_head``. A head the model is
built without is left out of the checkpoint's tensors (`without_heads`), as is the pooler of a
bare ``BertModel``.

`HookedTransformer.from_pretrained` refuses these checkpoints (`build_config` raises, pointing to
`HookedEncoder.from_pretrained`), which builds its config with `build_encoder_config`.
Not supported: relative position embeddings (``position_embedding_type`` other than
``"absolute"``) and decoder use (``is_decoder``, cross-attention).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

from torch import Tensor

from anatomist.config import TransformerConfig
from anatomist.families.base import (
    Family,
    WeightRule,
    head_size,
    kv_bias,
    kv_weight,
    output_weight,
    query_bias,
    query_weight,
    same,
    transpose,
)

ARCHITECTURES = (
    "BertForMaskedLM",
    "BertModel",
    "BertForPreTraining",
    "BertForNextSentencePrediction",
)
# Architectures whose checkpoints carry the masked-LM head (cls.predictions.*).
MLM_ARCHITECTURES = ("BertForMaskedLM", "BertForPreTraining")
# ... and the next-sentence head (bert.pooler.dense.*, cls.seq_relationship.*).
NSP_ARCHITECTURES = ("BertForPreTraining", "BertForNextSentencePrediction")


class EncoderOnlyError(NotImplementedError):
    """An encoder checkpoint was given to the decoder-only loader."""


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    """The decoder loader's entry point: BERT is an encoder, so this refuses with a pointer."""
    arch = (hf.get("architectures") or ["BERT"])[0]
    raise EncoderOnlyError(
        f"{arch} is an encoder (bidirectional, post-LayerNorm), not a decoder-only language "
        "model; load it with anatomist.HookedEncoder.from_pretrained(...)."
    )


def build_encoder_config(hf: dict[str, Any]) -> TransformerConfig:
    """The `TransformerConfig` of a BERT checkpoint's encoder (see `n_token_types`,
    `has_mlm_head` for the two facts the config has no field for)."""
    if hf.get("is_decoder", False) or hf.get("add_cross_attention", False):
        raise NotImplementedError(
            "BERT used as a decoder (is_decoder / add_cross_attention) is not supported."
        )
    position_type = hf.get("position_embedding_type", "absolute")
    if position_type != "absolute":
        raise NotImplementedError(
            f"BERT with position_embedding_type={position_type!r} is not supported "
            "(only 'absolute' learned positions)."
        )
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    return TransformerConfig(
        n_layers=hf["num_hidden_layers"],
        d_model=d_model,
        n_ctx=hf.get("max_position_embeddings", 512),
        d_head=head_size(d_model, n_heads, "hidden_size", "num_attention_heads"),
        n_heads=n_heads,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        act_fn=hf.get("hidden_act", "gelu"),
        normalization_type="LN",
        eps=hf.get("layer_norm_eps", 1e-12),
        causal=False,
        positional_embedding_type="standard",
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        original_architecture=(hf.get("architectures") or ["BertModel"])[0],
    )


def n_token_types(hf: dict[str, Any]) -> int:
    """Rows of the token-type (segment) embedding table."""
    return int(hf.get("type_vocab_size", 2))


def has_mlm_head(hf: dict[str, Any]) -> bool:
    """Whether the checkpoint's architecture carries the masked-LM head."""
    return any(arch in MLM_ARCHITECTURES for arch in hf.get("architectures") or [])


def has_nsp_head(hf: dict[str, Any]) -> bool:
    """Whether the checkpoint's architecture carries the pooler and next-sentence head."""
    return any(arch in NSP_ARCHITECTURES for arch in hf.get("architectures") or [])


_MLM_TENSORS = re.compile(r"cls\.predictions\..+")
_NSP_TENSORS = re.compile(r"(?:bert\.)?pooler\.dense\..+|cls\.seq_relationship\..+")


def without_heads(
    tensors: Iterable[tuple[str, Tensor]], mlm_head: bool, nsp_head: bool
) -> Iterator[tuple[str, Tensor]]:
    """The checkpoint's tensors less those of the heads the model is built without."""
    for name, tensor in tensors:
        if not mlm_head and _MLM_TENSORS.fullmatch(name):
            continue
        if not nsp_head and _NSP_TENSORS.fullmatch(name):
            continue
        yield name, tensor


# The output embedding is usually not stored (tied to the word embeddings).
TIED_SOURCE = r"(?:bert\.)?embeddings\.word_embeddings\.weight"
TIED_TARGET = "cls.predictions.decoder.weight"

_E = r"(?:bert\.)?embeddings\."
_L = r"(?:bert\.)?encoder\.layer\.(?P<i>\d+)\."
_A = "blocks.{i}.attn."
_W = r"(?:weight|gamma)"  # pre-2019 checkpoints name LayerNorm weights gamma/beta
_B = r"(?:bias|beta)"
_H = r"cls\.predictions\."

RULES = (
    WeightRule(_E + r"word_embeddings\.weight", ("embed.embed.W_E",), same),
    WeightRule(_E + r"position_embeddings\.weight", ("embed.pos_embed.W_pos",), same),
    WeightRule(
        _E + r"token_type_embeddings\.weight", ("embed.token_type_embed.W_token_type",), same
    ),
    WeightRule(_E + r"LayerNorm\." + _W, ("embed.ln.w",), same),
    WeightRule(_E + r"LayerNorm\." + _B, ("embed.ln.b",), same),
    WeightRule(_L + r"attention\.self\.query\.weight", (_A + "W_Q",), query_weight),
    WeightRule(_L + r"attention\.self\.key\.weight", (_A + "W_K",), kv_weight),
    WeightRule(_L + r"attention\.self\.value\.weight", (_A + "W_V",), kv_weight),
    WeightRule(_L + r"attention\.self\.query\.bias", (_A + "b_Q",), query_bias),
    WeightRule(_L + r"attention\.self\.key\.bias", (_A + "b_K",), kv_bias),
    WeightRule(_L + r"attention\.self\.value\.bias", (_A + "b_V",), kv_bias),
    WeightRule(_L + r"attention\.output\.dense\.weight", (_A + "W_O",), output_weight),
    WeightRule(_L + r"attention\.output\.dense\.bias", (_A + "b_O",), same),
    WeightRule(_L + r"attention\.output\.LayerNorm\." + _W, ("blocks.{i}.ln1.w",), same),
    WeightRule(_L + r"attention\.output\.LayerNorm\." + _B, ("blocks.{i}.ln1.b",), same),
    WeightRule(_L + r"intermediate\.dense\.weight", ("blocks.{i}.mlp.W_in",), transpose),
    WeightRule(_L + r"intermediate\.dense\.bias", ("blocks.{i}.mlp.b_in",), same),
    WeightRule(_L + r"output\.dense\.weight", ("blocks.{i}.mlp.W_out",), transpose),
    WeightRule(_L + r"output\.dense\.bias", ("blocks.{i}.mlp.b_out",), same),
    WeightRule(_L + r"output\.LayerNorm\." + _W, ("blocks.{i}.ln2.w",), same),
    WeightRule(_L + r"output\.LayerNorm\." + _B, ("blocks.{i}.ln2.b",), same),
    WeightRule(_H + r"transform\.dense\.weight", ("mlm_head.W",), transpose),
    WeightRule(_H + r"transform\.dense\.bias", ("mlm_head.b",), same),
    WeightRule(_H + r"transform\.LayerNorm\." + _W, ("mlm_head.ln.w",), same),
    WeightRule(_H + r"transform\.LayerNorm\." + _B, ("mlm_head.ln.b",), same),
    WeightRule(_H + r"decoder\.weight", ("unembed.W_U",), transpose),
    WeightRule(_H + r"(?:decoder\.)?bias", ("unembed.b_U",), same),
    WeightRule(r"(?:bert\.)?pooler\.dense\.weight", ("pooler.W",), transpose),
    WeightRule(r"(?:bert\.)?pooler\.dense\.bias", ("pooler.b",), same),
    WeightRule(r"cls\.seq_relationship\.weight", ("nsp_head.W",), transpose),
    WeightRule(r"cls\.seq_relationship\.bias", ("nsp_head.b",), same),
)

FAMILY = Family(
    name="bert",
    architectures=ARCHITECTURES,
    model_types=("bert",),
    build_config=build_config,
    rules=RULES,
    ignore=(_E + r"(?:position_ids|token_type_ids)",),
)
