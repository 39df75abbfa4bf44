"""GPTBigCode (GPTBigCodeForCausalLM; SantaCoder, StarCoder): GPT-2 with multi-query attention.

What differs from GPT-2: the layers are ``nn.Linear`` (weights stored [out, in], not Conv1D), and
``c_attn`` fuses q, k and v in one of two layouts. With ``multi_query`` (the default) it projects
to ``[d_model | d_head | d_head]``: all query heads, then ONE key head and ONE value head shared by
every query head (grouped-query attention with one key/value head). Without it the output is
per head, ``[head 0: q k v | head 1: q k v | ...]``. Learned positions, LayerNorm, tanh GELU, tied
embeddings by default. Cross-attention (``add_cross_attention``) is not supported.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from anatomist.config import TransformerConfig
from anatomist.families.base import Family, WeightRule, linear_rules, output_weight, transpose
from anatomist.families.gpt2 import _B, gpt2_rules, gpt2_style_config


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    if hf.get("add_cross_attention"):
        raise NotImplementedError(
            "gpt_bigcode: add_cross_attention=True (an encoder-decoder variant) is not supported."
        )
    return gpt2_style_config(
        hf,
        "GPTBigCodeForCausalLM",
        n_key_value_heads=1 if hf.get("multi_query", True) else hf["n_head"],
        act_fn=hf.get("activation_function", "gelu_pytorch_tanh"),
    )


def split_qkv_weight(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    """c_attn.weight [(h + 2 kv) * d_head, d_model] -> W_Q [h, d, e], W_K / W_V [kv, d, e]."""
    h, kv, e, d = cfg.n_heads, cfg.n_kv_heads, cfg.d_head, cfg.d_model
    if kv == h:  # per-head interleaved: [h, (q k v), e, d]
        q, k, v = t.view(h, 3, e, d).unbind(1)
    else:  # multi-query: [all q | one k | one v]
        q, k, v = (w.view(-1, e, d) for w in t.split([h * e, kv * e, kv * e]))
    return tuple(w.transpose(1, 2) for w in (q, k, v))


def split_qkv_bias(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    h, kv, e = cfg.n_heads, cfg.n_kv_heads, cfg.d_head
    if kv == h:
        return tuple(t.view(h, 3, e).unbind(1))
    return tuple(b.view(-1, e) for b in t.split([h * e, kv * e, kv * e]))


_A = "blocks.{i}.attn."
ATTENTION_RULES = (
    WeightRule(
        _B + r"attn\.c_attn\.weight", (_A + "W_Q", _A + "{kv}W_K", _A + "{kv}W_V"), split_qkv_weight
    ),
    WeightRule(
        _B + r"attn\.c_attn\.bias", (_A + "b_Q", _A + "{kv}b_K", _A + "{kv}b_V"), split_qkv_bias
    ),
    *linear_rules(_B + r"attn\.c_proj", _A + "W_O", _A + "b_O", output_weight),
)

FAMILY = Family(
    name="gpt_bigcode",
    architectures=("GPTBigCodeForCausalLM", "GPTBigCodeModel"),
    model_types=("gpt_bigcode",),
    build_config=build_config,
    rules=gpt2_rules(ATTENTION_RULES, mlp=transpose),  # nn.Linear: stored [out, in]
    # The causal-mask buffer older checkpoints saved.
    ignore=(r"(?:transformer\.)?bias", _B + r"attn\.(?:masked_)?bias"),
)
