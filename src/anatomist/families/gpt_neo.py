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
    head_size,
    linear_rules,
    output_weight,
    qkv_rules,
    transpose,
)
from anatomist.families.gpt2 import _B, gpt2_rules

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
        d_head=head_size(d_model, n_heads, "hidden_size", "num_heads"),
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


_SA = _B + r"attn\.attention\."
_A = "blocks.{i}.attn."
ATTENTION_RULES = (
    *qkv_rules(_SA, biases=False),
    *linear_rules(_SA + "out_proj", _A + "W_O", _A + "b_O", output_weight),
)

FAMILY = Family(
    name="gpt_neo",
    architectures=("GPTNeoForCausalLM", "GPTNeoModel"),
    model_types=("gpt_neo",),
    build_config=build_config,
    rules=gpt2_rules(ATTENTION_RULES, mlp=transpose),  # nn.Linear: stored [out, in]
    # The causal-mask buffers older checkpoints saved.
    ignore=(_SA + r"(?:masked_)?bias",),
)
