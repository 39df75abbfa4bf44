"""StarCoder2 (Starcoder2ForCausalLM): Llama-style attention with GPT-2-style everything else.

What differs from Llama: the norms are LayerNorms with weight AND bias (``norm_epsilon``); every
linear layer has a bias when ``use_bias`` (the default); the MLP is NOT gated (``c_fc`` then
``c_proj``, tanh GELU); every layer uses a sliding window when ``sliding_window`` is set;
embeddings are tied by default. Rotary (halves pairing) and grouped-query attention as Llama.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families import llama
from anatomist.families.base import Family, WeightRule, mlp_rules, same


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    return llama.llama_style_config(
        hf,
        "Starcoder2ForCausalLM",
        n_ctx=hf.get("max_position_embeddings", 4096),
        act_fn=hf.get("hidden_act", "gelu_pytorch_tanh"),
        gated_mlp=False,
        normalization_type="LN",
        eps=hf.get("norm_epsilon", 1e-5),
        sliding_window=hf.get("sliding_window"),  # every layer, when set
        tie_word_embeddings=hf.get("tie_word_embeddings", True),
    )


_L = llama._L

FAMILY = Family(
    name="starcoder2",
    architectures=("Starcoder2ForCausalLM", "Starcoder2Model"),
    model_types=("starcoder2",),
    build_config=build_config,
    rules=(
        *llama.RULES,  # embeddings, q/k/v/o weights and biases, norm weights, lm_head
        WeightRule(_L + r"input_layernorm\.bias", ("blocks.{i}.ln1.b",), same),
        WeightRule(_L + r"post_attention_layernorm\.bias", ("blocks.{i}.ln2.b",), same),
        *mlp_rules(_L + r"mlp\.c_fc", _L + r"mlp\.c_proj", optional_bias=True),  # use_bias
        WeightRule(r"(?:model\.)?norm\.bias", ("ln_final.b",), same),
    ),
    ignore=llama.IGNORE,
)
