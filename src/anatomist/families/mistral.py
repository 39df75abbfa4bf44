"""Mistral (MistralForCausalLM): Llama with sliding-window attention in every layer.

Differences from Llama: every layer attends to at most the last `sliding_window` keys (None, as
in Mistral v0.2 and later, means full attention); no attention or MLP biases; partial rotary is
refused; the context defaults to 131072. The weight names are Llama's. A `layer_types` entry in
the config is ignored, as transformers ignores it for this class.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.base import Family
from anatomist.families.llama import IGNORE, RULES, llama_rope, llama_style_config


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    return llama_style_config(
        hf,
        "MistralForCausalLM",
        rope=llama_rope,
        n_ctx=hf.get("max_position_embeddings", 4096 * 32),
        # transformers' default (4096) applies when the key is absent; null means full attention.
        sliding_window=hf.get("sliding_window", 4096),
    )


FAMILY = Family(
    name="mistral",
    architectures=("MistralForCausalLM", "MistralModel"),
    model_types=("mistral",),
    build_config=build_config,
    rules=RULES,
    ignore=IGNORE,
)
