"""Granite (GraniteForCausalLM; IBM Granite 3.x dense): Llama with four scalar multipliers.

Differs from Llama: token embeddings are multiplied by ``embedding_multiplier`` (embed_scale);
attention scores are multiplied by ``attention_multiplier`` instead of divided by sqrt(d_head);
the outputs of attention and of the MLP are multiplied by ``residual_multiplier`` before the
residual add, and the logits are divided by ``logits_scaling``. The last two have no model option:
they are folded into the weights at load (W_O, b_O, W_out, b_out; and W_U, also when W_U comes
from the tied input embedding). ``mlp_bias`` also puts a bias on the gate projection (b_gate).

Also the home of `FoldedScalesConfig` (how a transform learns a scalar it folds), which Cohere
shares.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from torch import Tensor

from anatomist.config import TransformerConfig
from anatomist.families import llama
from anatomist.families.base import Family, WeightRule, output_weight, same


@dataclass
class FoldedScalesConfig(TransformerConfig):
    """A `TransformerConfig` that also records scalars the loader folded into the weights.

    The model never reads these: they are already part of W_O/b_O/W_out/b_out
    (`folded_residual_multiplier`) and W_U (`folded_logits_multiplier`), and are kept so the
    weight transforms can read them and so users can see what was folded."""

    folded_residual_multiplier: float = 1.0  # attention and MLP outputs were multiplied by this
    folded_logits_multiplier: float = 1.0  # the logits (W_U) were multiplied by this


def folded(cfg: TransformerConfig) -> FoldedScalesConfig:
    if not isinstance(cfg, FoldedScalesConfig):
        raise TypeError(
            "This family folds scalars into its weights and needs the config its build_config "
            f"returns (a FoldedScalesConfig), got {type(cfg).__name__}."
        )
    return cfg


def with_folded_scales(
    cfg: TransformerConfig, residual: float = 1.0, logits: float = 1.0
) -> FoldedScalesConfig:
    values = {f.name: getattr(cfg, f.name) for f in fields(TransformerConfig)}
    return FoldedScalesConfig(
        **values, folded_residual_multiplier=residual, folded_logits_multiplier=logits
    )


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    cfg = llama.llama_style_config(
        hf,
        "GraniteForCausalLM",
        embed_scale=float(hf.get("embedding_multiplier", 1.0)),
        attn_scale=1.0 / float(hf.get("attention_multiplier", 1.0)),
    )
    return with_folded_scales(
        cfg,
        residual=float(hf.get("residual_multiplier", 1.0)),
        logits=1.0 / float(hf.get("logits_scaling", 1.0)),
    )


# --- transforms that fold the multipliers ------------------------------------------------------
def scaled_output_weight(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    return output_weight(t.float() * folded(cfg).folded_residual_multiplier, cfg)


def scaled_output_bias(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    return (t.float() * folded(cfg).folded_residual_multiplier,)


def scaled_down_weight(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    return ((t.float() * folded(cfg).folded_residual_multiplier).T,)


def scaled_unembed(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    """lm_head weight [V, d] -> W_U [d, V], times the logits multiplier."""
    return ((t.float() * folded(cfg).folded_logits_multiplier).T,)


def embed_and_tied_unembed(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    """The input embedding, and, when tied, W_U from it with the logits multiplier folded in
    (the loader's own tied copy would miss the multiplier)."""
    if not cfg.tie_word_embeddings:
        return (t,)
    return (t,) + scaled_unembed(t, cfg)


_L = llama._L
_A = "blocks.{i}.attn."
_EMBED = r"(?:model\.)?embed_tokens\.weight"
EMBED_TIED = WeightRule(_EMBED, ("embed.W_E", "unembed.W_U"), embed_and_tied_unembed)
UNEMBED = WeightRule(r"lm_head\.weight", ("unembed.W_U",), scaled_unembed)

RULES = (
    EMBED_TIED,
    UNEMBED,
    WeightRule(_L + r"self_attn\.o_proj\.weight", (_A + "W_O",), scaled_output_weight),
    # the biases exist only under attention_bias / mlp_bias
    WeightRule(_L + r"self_attn\.o_proj\.bias", (_A + "b_O",), scaled_output_bias, True),
    WeightRule(_L + r"mlp\.down_proj\.weight", ("blocks.{i}.mlp.W_out",), scaled_down_weight),
    WeightRule(_L + r"mlp\.down_proj\.bias", ("blocks.{i}.mlp.b_out",), scaled_output_bias, True),
    WeightRule(_L + r"mlp\.gate_proj\.bias", ("blocks.{i}.mlp.b_gate",), same, True),
) + llama.RULES

FAMILY = Family(
    name="granite",
    architectures=("GraniteForCausalLM", "GraniteModel"),
    model_types=("granite",),
    build_config=build_config,
    rules=RULES,
    ignore=llama.IGNORE,
)
