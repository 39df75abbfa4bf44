"""OLMoE (OlmoeForCausalLM): Llama attention with a QK norm over all heads, and a sparse
mixture-of-experts MLP in every layer.

Differences from Llama: q_norm and k_norm are RMSNorms over the whole query (``n_heads * d_head``)
and key (``n_kv_heads * d_head``) projections, before the split into heads and before rotary (as
OLMo 2); each MLP is `num_experts` SwiGLU experts behind a linear router, every token going through
its top `num_experts_per_tok` experts weighted by the router's softmax probabilities (renormalised
over those experts only with `norm_topk_prob`, off for OLMoE-1B-7B). ``attention_bias`` adds biases
to q, k, v and o. ``clip_qkv`` (clamping q, k and v after projection) has no native counterpart and
is refused. Expert weight names: `anatomist.families.mixtral`.
"""

from __future__ import annotations

from typing import Any

from anatomist.config import TransformerConfig
from anatomist.families.base import head_size
from anatomist.families.llama import IGNORE, QK_NORM_RULES, RULES, llama_rope, llama_style_config
from anatomist.families.mixtral import EXPERT_RULES, MoEFamily, expert_count, moe_settings


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    if hf.get("clip_qkv") is not None:
        raise NotImplementedError(
            f"olmoe: clip_qkv={hf['clip_qkv']} (clamping q, k and v after projection) is not "
            "supported by the native model."
        )
    return llama_style_config(
        hf,
        "OlmoeForCausalLM",
        rope=llama_rope,
        n_ctx=hf.get("max_position_embeddings", 4096),
        # q_norm spans hidden_size, so heads must tile it (head_dim is not read)
        d_head=head_size(
            hf["hidden_size"], hf["num_attention_heads"], "hidden_size", "num_attention_heads"
        ),
        d_mlp=hf["intermediate_size"],
        **moe_settings(hf, hf.get("norm_topk_prob", False), expert_count(hf)),
        eps=hf.get("rms_norm_eps", 1e-5),
        qk_norm=True,
        qk_norm_over_heads=True,
    )


FAMILY = MoEFamily(
    name="olmoe",
    architectures=("OlmoeForCausalLM", "OlmoeModel"),
    model_types=("olmoe",),
    build_config=build_config,
    rules=(*RULES, *EXPERT_RULES, *QK_NORM_RULES),
    ignore=IGNORE,
)
