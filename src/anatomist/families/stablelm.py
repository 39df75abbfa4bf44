"""StableLM (StableLmForCausalLM; StableLM 2, StableLM-3B-4E1T): Llama layout with LayerNorms.

Differs from Llama: LayerNorms with weight and bias; rotary (halves pairing) on only the first
``partial_rotary_factor`` of each head (default 0.25); optional q/k/v biases (``use_qkv_bias``;
the output projection has none); optionally a parallel block (``use_parallel_residual``) where
attention and the SwiGLU MLP read the same ``input_layernorm`` (loaded as both ln1 and ln2; its
bias folds into b_in and b_gate). ``qk_layernorm`` (per-head LayerNorms on q and k, StableLM 2
12B) is not supported.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from anatomist.config import TransformerConfig
from anatomist.families import llama
from anatomist.families.base import Family, WeightRule, same
from anatomist.families.gpt_neox import partial_rotary


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    if hf.get("qk_layernorm"):
        raise NotImplementedError(
            "StableLM with qk_layernorm=True (per-head LayerNorms on queries and keys) is not "
            "supported."
        )
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    d_head = d_model // n_heads
    rotary_dim, theta, scaling = partial_rotary(
        hf, d_head, "partial_rotary_factor", "rope_theta", 0.25
    )
    return TransformerConfig(
        n_layers=hf["num_hidden_layers"],
        d_model=d_model,
        n_ctx=hf.get("max_position_embeddings", 4096),
        d_head=d_head,
        n_heads=n_heads,
        n_key_value_heads=hf.get("num_key_value_heads") or n_heads,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        act_fn=hf.get("hidden_act", "silu"),
        gated_mlp=True,
        normalization_type="LN",
        eps=hf.get("layer_norm_eps", 1e-5),
        parallel_attn_mlp=bool(hf.get("use_parallel_residual", False)),
        positional_embedding_type="rotary",
        rotary_dim=rotary_dim,
        rotary_base=theta,
        rope_scaling=scaling,
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        original_architecture="StableLmForCausalLM",
    )


def input_norm(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    # A parallel block has one norm, read by attention and the MLP alike.
    return (t, t) if cfg.parallel_attn_mlp else (t,)


_L = llama._L
_NORMS = {
    _L + r"input_layernorm\.(?P<p>weight|bias)": ("blocks.{i}.ln1", "blocks.{i}.ln2"),
    _L + r"post_attention_layernorm\.(?P<p>weight|bias)": ("blocks.{i}.ln2",),
    r"(?:model\.)?norm\.(?P<p>weight|bias)": ("ln_final",),
}
NORM_RULES = tuple(
    WeightRule(
        pattern.replace("(?P<p>weight|bias)", param),
        tuple(f"{t}.{short}" for t in targets),
        input_norm if len(targets) == 2 else same,
    )
    for pattern, targets in _NORMS.items()
    for param, short in (("weight", "w"), ("bias", "b"))
)
OTHER_RULES = tuple(rule for rule in llama.RULES if "norm" not in rule.pattern)

FAMILY = Family(
    name="stablelm",
    architectures=("StableLmForCausalLM", "StableLmModel"),
    model_types=("stablelm",),
    build_config=build_config,
    rules=NORM_RULES + OTHER_RULES,
    ignore=(_L + r"self_attn\.rotary_emb\.inv_freq",),
)
