"""T5 (T5ForConditionalGeneration): an encoder-decoder, loaded by `HookedEncoderDecoder`.

What differs from the decoder families: a bidirectional encoder and a causal decoder with
cross-attention to the encoder output; pre-RMSNorm blocks without biases anywhere; attention
scores are not scaled by 1/sqrt(d_head); positions enter only as a learned relative position
bias owned by the first self-attention layer of each stack; the embedding is shared by encoder
and decoder. Original T5 (``tie_word_embeddings`` true, the default) multiplies the decoder
output by ``d_model ** -0.5`` before a tied unembedding; T5 v1.1 / Flan-T5 (false) use a separate
``lm_head`` without rescaling and a gated-GELU MLP (``feed_forward_proj="gated-gelu"``).

`HookedTransformer.from_pretrained` refuses these checkpoints (`build_config` raises, pointing to
`HookedEncoderDecoder.from_pretrained`), which builds its config with
`build_encoder_decoder_config`. Not supported: ``T5EncoderModel`` alone and the classification
heads.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.base import Family, WeightRule, output_weight, query_weight, same, transpose

ARCHITECTURES = ("T5ForConditionalGeneration",)


class EncoderDecoderOnlyError(NotImplementedError):
    """An encoder-decoder checkpoint was given to the decoder-only loader."""


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    """The decoder loader's entry point: T5 is an encoder-decoder, so this refuses with a
    pointer."""
    raise EncoderDecoderOnlyError(
        "T5 is an encoder-decoder model, not a decoder-only language model; load it with "
        "anatomist.HookedEncoderDecoder.from_pretrained(...)."
    )


def _activation(hf: dict[str, Any]) -> tuple[str, bool]:
    """(act_fn, gated) from ``feed_forward_proj`` ("relu", "gated-gelu", "gated-silu", ...)."""
    proj = str(hf.get("feed_forward_proj", "relu"))
    gated = proj.startswith("gated-")
    act = proj.removeprefix("gated-")
    if proj == "gated-gelu":  # Hugging Face maps this one to the tanh approximation
        act = "gelu_new"
    return act, gated


def scales_decoder_output(hf: dict[str, Any]) -> bool:
    """Whether the decoder output is multiplied by d_model ** -0.5 before the unembedding."""
    if "scale_decoder_outputs" in hf:  # transformers 5 writes this explicitly
        return bool(hf["scale_decoder_outputs"])
    return hf.get("tie_word_embeddings", True) is not False


def build_encoder_decoder_config(hf: dict[str, Any]) -> TransformerConfig:
    act, gated = _activation(hf)
    n_layers = hf["num_layers"]
    return TransformerConfig(
        n_layers=n_layers,
        n_decoder_layers=hf.get("num_decoder_layers") or n_layers,
        d_model=hf["d_model"],
        n_ctx=hf.get("n_positions") or 512,  # relative positions: no hard limit; T5 trained at 512
        d_head=hf["d_kv"],
        n_heads=hf["num_heads"],
        d_mlp=hf["d_ff"],
        d_vocab=hf["vocab_size"],
        act_fn=act,
        gated_mlp=gated,
        normalization_type="RMS",
        eps=hf.get("layer_norm_epsilon", 1e-6),
        causal=False,
        use_attn_scale=False,
        positional_embedding_type="relative_positional_bias",
        relative_attention_num_buckets=hf.get("relative_attention_num_buckets", 32),
        relative_attention_max_distance=hf.get("relative_attention_max_distance", 128),
        tie_word_embeddings=scales_decoder_output(hf),
        default_prepend_bos=True,  # "add the tokenizer's special tokens": T5 appends </s>
        original_architecture="T5ForConditionalGeneration",
    )


def decoder_start_token_id(hf: dict[str, Any]) -> int:
    start = hf.get("decoder_start_token_id")
    if start is None:
        start = hf.get("pad_token_id")
    return 0 if start is None else int(start)


# The output embedding is not stored when tied to the shared embedding.
TIED_SOURCE = r"shared\.weight"
TIED_TARGET = "lm_head.weight"

_A = r"\.SelfAttention\."
_X = r"\.EncDecAttention\."
_FF = r"\.DenseReluDense\."


def _stack(stack: str, mlp_layer: int) -> tuple[WeightRule, ...]:
    """Rules for one stack; its MLP is sub-layer `mlp_layer` (1 in the encoder, 2 in the
    decoder, after cross-attention)."""
    L = stack + r"\.block\.(?P<i>\d+)\.layer\."
    N = stack + ".{i}."
    rules = [
        WeightRule(L + r"0" + _A + r"q\.weight", (N + "attn.W_Q",), query_weight),
        WeightRule(L + r"0" + _A + r"k\.weight", (N + "attn.W_K",), query_weight),
        WeightRule(L + r"0" + _A + r"v\.weight", (N + "attn.W_V",), query_weight),
        WeightRule(L + r"0" + _A + r"o\.weight", (N + "attn.W_O",), output_weight),
        WeightRule(
            L + r"0" + _A + r"relative_attention_bias\.weight",
            (N + "attn.rel_pos_bias.weight",),
            same,
        ),
        WeightRule(L + r"0\.layer_norm\.weight", (N + "ln1.w",), same),
        WeightRule(L + rf"{mlp_layer}" + _FF + r"wi\.weight", (N + "mlp.W_in",), transpose),
        WeightRule(L + rf"{mlp_layer}" + _FF + r"wi_0\.weight", (N + "mlp.W_gate",), transpose),
        WeightRule(L + rf"{mlp_layer}" + _FF + r"wi_1\.weight", (N + "mlp.W_in",), transpose),
        WeightRule(L + rf"{mlp_layer}" + _FF + r"wo\.weight", (N + "mlp.W_out",), transpose),
        WeightRule(
            L + rf"{mlp_layer}\.layer_norm\.weight",
            (N + ("ln3.w" if mlp_layer == 2 else "ln2.w"),),
            same,
        ),
        WeightRule(stack + r"\.final_layer_norm\.weight", (f"{stack}_final_ln.w",), same),
    ]
    if stack == "decoder":
        rules += [
            WeightRule(L + r"1" + _X + r"q\.weight", (N + "cross_attn.W_Q",), query_weight),
            WeightRule(L + r"1" + _X + r"k\.weight", (N + "cross_attn.W_K",), query_weight),
            WeightRule(L + r"1" + _X + r"v\.weight", (N + "cross_attn.W_V",), query_weight),
            WeightRule(L + r"1" + _X + r"o\.weight", (N + "cross_attn.W_O",), output_weight),
            WeightRule(L + r"1\.layer_norm\.weight", (N + "ln2.w",), same),
        ]
    return tuple(rules)


FAMILY = Family(
    name="t5",
    architectures=ARCHITECTURES,
    model_types=("t5",),
    build_config=build_config,
    rules=(
        WeightRule(r"shared\.weight", ("embed.W_E",), same),
        *_stack("encoder", 1),
        *_stack("decoder", 2),
        WeightRule(r"lm_head\.weight", ("unembed.W_U",), transpose),
    ),
    ignore=(
        r"(?:encoder|decoder)\.embed_tokens\.weight",  # copies of shared.weight
        # Cross-attention has no position bias; some checkpoints carry an unused table anyway.
        r"decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight",
    ),
)
