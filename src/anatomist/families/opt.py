"""OPT (OPTForCausalLM): GPT-2's block (pre-LayerNorm, learned positions) with separate projections.

What differs from GPT-2: q/k/v/out are separate ``nn.Linear`` layers, the MLP is ReLU by
default, embeddings are tied by default, and the learned position table has two extra leading
rows (fairseq's padding offset: position p reads row p + 2), which we drop. LayerNorms without
weights (``layer_norm_elementwise_affine=False``) load as ``LNPre``.

opt-350m differs twice more:
- ``do_layer_norm_before=False``: Post-LN blocks (``post_layer_norm``), x = LN(x + attn(x)),
  x = LN(x + mlp(x)), with ``self_attn_layer_norm`` as ln1 and the layer's ``final_layer_norm``
  as ln2, and no final LayerNorm (transformers builds none; a stored one is ignored, as there).
  Weight processing then skips fold_ln and center_writing_weights (see loading/processing.py).
- ``word_embed_proj_dim`` != ``hidden_size``: token embeddings and the LM head are that wide;
  ``project_in``/``project_out`` (bias-free) map them to and from the residual stream
  (``d_embed``: ``embed.W_proj_in``, ``unembed.W_proj_out``).
Checkpoints without the final LayerNorm (``_remove_final_layer_norm``) load with ``final_norm``
off.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

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
    transpose,
)

POSITION_OFFSET = 2


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    pre_ln = hf.get("do_layer_norm_before", True)
    d_embed = hf.get("word_embed_proj_dim") or d_model
    affine = hf.get("layer_norm_elementwise_affine", True)
    return TransformerConfig(
        n_layers=hf["num_hidden_layers"],
        d_model=d_model,
        n_ctx=hf.get("max_position_embeddings", 2048),
        d_head=head_size(d_model, n_heads, "hidden_size", "num_attention_heads"),
        n_heads=n_heads,
        d_mlp=hf["ffn_dim"],
        d_vocab=hf["vocab_size"],
        act_fn=hf.get("activation_function", "relu"),
        normalization_type="LN" if affine else "LNPre",
        eps=1e-5,  # nn.LayerNorm's default; OPT's config has no epsilon
        positional_embedding_type="standard",
        pre_norm=pre_ln,
        post_layer_norm=not pre_ln,
        final_norm=pre_ln and not hf.get("_remove_final_layer_norm", False),
        d_embed=d_embed if d_embed != d_model else None,
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        original_architecture="OPTForCausalLM",
    )


def final_norm_weight(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    # transformers builds no final LayerNorm for Post-LN OPT and drops one a checkpoint stores.
    return (t,) if cfg.final_norm else ()


def positions_weight(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    # [max_positions + 2, d_model]: the first two rows are never read by a real token.
    return (t[POSITION_OFFSET:],)


_D = r"(?:model\.)?(?:decoder\.)?"
_L = _D + r"layers\.(?P<i>\d+)\."
_A = "blocks.{i}.attn."

FAMILY = Family(
    name="opt",
    architectures=("OPTForCausalLM",),
    model_types=("opt",),
    build_config=build_config,
    rules=(
        WeightRule(_D + r"embed_tokens\.weight", ("embed.W_E",), same),
        WeightRule(_D + r"embed_positions\.weight", ("pos_embed.W_pos",), positions_weight),
        *norm_rules(_L + "self_attn_layer_norm", "blocks.{i}.ln1"),
        # the projections' biases exist only under enable_bias
        *qkv_rules(_L + r"self_attn\.", optional_bias=True),
        *linear_rules(
            _L + r"self_attn\.out_proj", _A + "W_O", _A + "b_O", output_weight, optional_bias=True
        ),
        *norm_rules(_L + "final_layer_norm", "blocks.{i}.ln2"),
        *mlp_rules(_L + "fc1", _L + "fc2", optional_bias=True),
        *norm_rules(_D + "final_layer_norm", "ln_final", transform=final_norm_weight),
        WeightRule(_D + r"project_in\.weight", ("embed.W_proj_in",), transpose),
        WeightRule(_D + r"project_out\.weight", ("unembed.W_proj_out",), transpose),
        WeightRule(r"lm_head\.weight", ("unembed.W_U",), transpose),
    ),
)
