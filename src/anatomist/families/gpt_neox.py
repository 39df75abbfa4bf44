"""GPT-NeoX (GPTNeoXForCausalLM; Pythia, GPT-NeoX-20B): LayerNorm, partial rotary, GELU MLP.

What differs from GPT-2: rotary positions (halves pairing, as Llama) on only the first
``rotary_pct`` of each head, a parallel block by default (``use_parallel_residual``: attention
and MLP both read resid_pre, each through its own LayerNorm), and one fused ``query_key_value``
projection whose output rows are grouped per head as ``[head][q|k|v][d_head]``. The output
embedding is untied by default and stored as ``embed_out`` (older checkpoints) or ``lm_head``.

Shared with other families: `partial_rotary_settings` (StableLM, Phi) and `neox_layer_rules`
(BLOOM).
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
    rope_settings,
    same,
    stored_as,
    transpose,
)


def partial_rotary_settings(
    hf: dict[str, Any], d_head: int, legacy_factor_key: str, legacy_theta_key: str, default: float
) -> dict[str, Any]:
    """The rotary fields of TransformerConfig (rotary_dim, rotary_base, rope_scaling) for a
    partial-rotary family, from either config style: transformers 5 keeps
    ``partial_rotary_factor`` and ``rope_theta`` in ``rope_parameters``, older files keep them at
    the top level under the family's own names."""
    params = hf.get("rope_parameters") or {}
    factor = params.get("partial_rotary_factor", hf.get(legacy_factor_key, default))
    theta, scaling = rope_settings(hf)
    if "rope_theta" not in params and "rope_theta" not in hf and legacy_theta_key in hf:
        theta = float(hf[legacy_theta_key])
    return dict(rotary_dim=int(d_head * float(factor)), rotary_base=theta, rope_scaling=scaling)


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    d_model, n_heads = hf["hidden_size"], hf["num_attention_heads"]
    d_head = head_size(d_model, n_heads, "hidden_size", "num_attention_heads")
    return TransformerConfig(
        n_layers=hf["num_hidden_layers"],
        d_model=d_model,
        n_ctx=hf.get("max_position_embeddings", 2048),
        d_head=d_head,
        n_heads=n_heads,
        d_mlp=hf["intermediate_size"],
        d_vocab=hf["vocab_size"],
        act_fn=hf.get("hidden_act", "gelu"),
        normalization_type="LN",
        eps=hf.get("layer_norm_eps", 1e-5),
        parallel_attn_mlp=hf.get("use_parallel_residual", True),
        positional_embedding_type="rotary",
        **partial_rotary_settings(hf, d_head, "rotary_pct", "rotary_emb_base", 0.25),
        tie_word_embeddings=hf.get("tie_word_embeddings", False),
        original_architecture="GPTNeoXForCausalLM",
    )


@stored_as(lambda shapes, cfg: (sum(s[0] * s[2] for s in shapes), shapes[0][1]))
def split_qkv_weight(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    # [n_heads * 3 * d_head, d_model], rows per head q|k|v -> three [n_heads, d_model, d_head]
    w = t.view(cfg.n_heads, 3, cfg.d_head, cfg.d_model)
    return tuple(w[:, j].transpose(1, 2) for j in range(3))


@stored_as(lambda shapes, cfg: (sum(s[0] * s[1] for s in shapes),))
def split_qkv_bias(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    b = t.view(cfg.n_heads, 3, cfg.d_head)
    return tuple(b[:, j] for j in range(3))


@stored_as(lambda shapes, cfg: (shapes[0][2], shapes[0][0] * shapes[0][1]))
def attn_out_weight(t: Tensor, cfg: TransformerConfig) -> tuple[Tensor, ...]:
    # dense.weight [d_model, n_heads * d_head] -> W_O [n_heads, d_head, d_model]
    return (t.T.reshape(cfg.n_heads, cfg.d_head, cfg.d_model),)


def neox_layer_rules(
    layer: str, attention: str, optional_attention_bias: bool = False
) -> tuple[WeightRule, ...]:
    """One GPT-NeoX layer's tensors under the regex `layer` (also BLOOM's layout): the
    ``input_layernorm``, the fused per-head ``{attention}.query_key_value`` and the output
    ``{attention}.dense``, the ``post_attention_layernorm``, and the MLP's ``dense_h_to_4h`` and
    ``dense_4h_to_h``. `optional_attention_bias`: only some configs have the attention
    projections' biases (GPT-NeoX's attention_bias)."""
    a, qkv = "blocks.{i}.attn.", layer + attention + r"\.query_key_value"
    optional = optional_attention_bias
    return (
        *norm_rules(layer + "input_layernorm", "blocks.{i}.ln1"),
        WeightRule(qkv + r"\.weight", (a + "W_Q", a + "W_K", a + "W_V"), split_qkv_weight),
        WeightRule(qkv + r"\.bias", (a + "b_Q", a + "b_K", a + "b_V"), split_qkv_bias, optional),
        *linear_rules(
            layer + attention + r"\.dense",
            a + "W_O",
            a + "b_O",
            attn_out_weight,
            optional_bias=optional,
        ),
        *norm_rules(layer + "post_attention_layernorm", "blocks.{i}.ln2"),
        *mlp_rules(layer + r"mlp\.dense_h_to_4h", layer + r"mlp\.dense_4h_to_h"),
    )


_L = r"(?:gpt_neox\.)?layers\.(?P<i>\d+)\."

FAMILY = Family(
    name="gpt_neox",
    architectures=("GPTNeoXForCausalLM",),
    model_types=("gpt_neox",),
    build_config=build_config,
    rules=(
        WeightRule(r"(?:gpt_neox\.)?embed_in\.weight", ("embed.W_E",), same),
        *neox_layer_rules(_L, "attention", optional_attention_bias=True),
        *norm_rules(r"(?:gpt_neox\.)?final_layer_norm", "ln_final"),
        WeightRule(r"(?:embed_out|lm_head)\.weight", ("unembed.W_U",), transpose),
    ),
    ignore=(
        _L + r"attention\.(?:masked_)?bias",
        _L + r"attention\.rotary_emb\.inv_freq",
    ),
)
