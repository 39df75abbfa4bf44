"""GPT-Neo (GPTNeoForCausalLM): GPT-2 layout with alternating global and local attention.

What differs from GPT-2: separate ``q_proj``/``k_proj``/``v_proj`` ``nn.Linear`` layers without
biases (``out_proj`` has one), the MLP is ``nn.Linear`` (weights stored [out, in]), attention
scores are NOT divided by sqrt(d_head), and each layer is "global" (full causal) or "local" (a
query sees only the last ``window_size`` keys), as ``attention_types`` lists them (expanded into
``attention_layers``). Learned positions, LayerNorm, tied embeddings by default.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.base import (
    Family,
    WeightRule,
    output_weight,
    query_weight,
    same,
    transpose,
)

_LAYER_TYPES = {"global": "full_attention", "local": "sliding_attention"}


def attention_layers(hf: dict[str, Any]) -> list[str]:
    """Each layer's attention type: ``attention_layers``, or ``attention_types`` expanded
    (``[[["global", "local"], 12]]`` means the pair repeated 12 times)."""
    layers = hf.get("attention_layers")
    if not layers:
        types = hf.get("attention_types") or [[["global", "local"], hf["num_layers"] // 2]]
        layers = [kind for kinds, repeat in types for _ in range(repeat) for kind in kinds]
    unknown = sorted(set(layers) - set(_LAYER_TYPES))
    if unknown:
        raise ValueError(
            f"gpt_neo: unknown attention layer types {unknown} (known: global, local)."
        )
    if len(layers) != hf["num_layers"]:
        raise ValueError(
            f"gpt_neo: attention_layers lists {len(layers)} layers, num_layers is {hf['num_layers']}."
        )
    return list(layers)


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    d_model, n_heads = hf["hidden_size"], hf["num_heads"]
    layers = attention_layers(hf)
    return TransformerConfig(
        n_layers=hf["num_layers"],
        d_model=d_model,
        n_ctx=hf["max_position_embeddings"],
        d_head=d_model // n_heads,
        n_heads=n_heads,
        d_mlp=hf.get("intermediate_size") or 4 * d_model,
        d_vocab=hf["vocab_size"],
        act_fn=hf.get("activation_function", "gelu_new"),
        normalization_type="LN",
        eps=hf.get("layer_norm_epsilon", 1e-5),
        use_attn_scale=False,  # GPT-Neo's scores are raw q . k
        sliding_window=hf.get("window_size", 256),
        layer_types=[_LAYER_TYPES[kind] for kind in layers],
        positional_embedding_type="standard",
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
        original_architecture="GPTNeoForCausalLM",
    )


_B = r"(?:transformer\.)?h\.(?P<i>\d+)\."
_SA = _B + r"attn\.attention\."
_A = "blocks.{i}.attn."

FAMILY = Family(
    name="gpt_neo",
    architectures=("GPTNeoForCausalLM", "GPTNeoModel"),
    model_types=("gpt_neo",),
    build_config=build_config,
    rules=(
        WeightRule(r"(?:transformer\.)?wte\.weight", ("embed.W_E",), same),
        WeightRule(r"(?:transformer\.)?wpe\.weight", ("pos_embed.W_pos",), same),
        WeightRule(_B + r"ln_1\.weight", ("blocks.{i}.ln1.w",), same),
        WeightRule(_B + r"ln_1\.bias", ("blocks.{i}.ln1.b",), same),
        WeightRule(_SA + r"q_proj\.weight", (_A + "W_Q",), query_weight),
        WeightRule(_SA + r"k_proj\.weight", (_A + "W_K",), query_weight),
        WeightRule(_SA + r"v_proj\.weight", (_A + "W_V",), query_weight),
        WeightRule(_SA + r"out_proj\.weight", (_A + "W_O",), output_weight),
        WeightRule(_SA + r"out_proj\.bias", (_A + "b_O",), same),
        WeightRule(_B + r"ln_2\.weight", ("blocks.{i}.ln2.w",), same),
        WeightRule(_B + r"ln_2\.bias", ("blocks.{i}.ln2.b",), same),
        WeightRule(_B + r"mlp\.c_fc\.weight", ("blocks.{i}.mlp.W_in",), transpose),
        WeightRule(_B + r"mlp\.c_fc\.bias", ("blocks.{i}.mlp.b_in",), same),
        WeightRule(_B + r"mlp\.c_proj\.weight", ("blocks.{i}.mlp.W_out",), transpose),
        WeightRule(_B + r"mlp\.c_proj\.bias", ("blocks.{i}.mlp.b_out",), same),
        WeightRule(r"(?:transformer\.)?ln_f\.weight", ("ln_final.w",), same),
        WeightRule(r"(?:transformer\.)?ln_f\.bias", ("ln_final.b",), same),
        WeightRule(r"lm_head\.weight", ("unembed.W_U",), transpose),
    ),
    # The causal-mask buffers older checkpoints saved.
    ignore=(_SA + r"(?:masked_)?bias",),
)
