"""The options GPT-OSS switches on, against direct computations: attention sinks (fused and
explicit paths), the biased top-k-then-softmax router, the clamped SwiGLU, and what weight
processing does with them."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import anatomist
from anatomist.families.registry import family_for_architecture
from tests.helpers import randomize_small_params


def make(**options: Any) -> anatomist.HookedTransformer:
    settings: dict[str, Any] = dict(
        n_layers=2,
        d_model=32,
        n_ctx=32,
        d_head=8,
        n_heads=4,
        d_mlp=24,
        d_vocab=50,
        seed=0,
        act_fn="quick_gelu",
        gated_mlp=True,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        attn_sinks=True,
    )
    settings.update(options)
    model = anatomist.HookedTransformer(anatomist.TransformerConfig(**settings))
    randomize_small_params(model)
    with torch.no_grad():
        for block in model.blocks:
            if model.cfg.attn_sinks:
                block.attn.sinks.copy_(torch.linspace(-1.0, 2.0, model.cfg.n_heads))
    return model


def tokens(pos: int = 12) -> torch.Tensor:
    return torch.randint(0, 50, (2, pos), generator=torch.Generator().manual_seed(3))


# A no-op hook on every pattern, which makes every layer take the explicit path.
EXPLICIT = [(lambda name: name.endswith("hook_pattern"), lambda t, hook: None)]


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"n_key_value_heads": 2},
        {"d_head": 12, "sliding_window": 4},  # head size not a multiple of 8, windowed
        {"positional_embedding_type": "alibi", "normalization_type": "LN", "act_fn": "gelu"},
    ],
    ids=["mha", "gqa", "head12-window", "alibi"],
)
def test_fused_sinks_match_the_explicit_path(options: dict[str, Any]) -> None:
    model = make(**options)
    ids = tokens()
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # left padding in one row
    for kwargs in ({}, {"attention_mask": mask}):
        fused = model(ids, **kwargs)
        with model.hooks(fwd_hooks=EXPLICIT):
            explicit = model(ids, **kwargs)
        assert (fused - explicit).abs().max() <= 1e-5


def test_pattern_is_the_softmax_with_the_sink_over_real_keys() -> None:
    model = make(n_key_value_heads=2)
    _, cache = model.run_with_cache(tokens())
    attn = model.blocks[0].attn
    q, k = cache["rot_q", 0], cache["rot_k", 0].repeat_interleave(2, dim=2)  # [b, p, h, e]
    scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / attn.scale
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    scores = scores.masked_fill(~causal, float("-inf"))
    sink = attn.sinks[None, :, None].expand(2, -1, 12)  # [b, h, q]
    denominator = scores.exp().sum(-1) + sink.exp()
    expected = scores.exp() / denominator[..., None]
    pattern = cache["pattern", 0]
    assert pattern.shape == (2, 4, 12, 12)
    assert (pattern - expected).abs().max() <= 1e-6
    # What a row misses is the sink's share; heads with larger sinks give it more.
    assert (1 - pattern.sum(-1) - sink.exp() / denominator).abs().max() <= 1e-6
    assert (pattern.sum(-1)[:, 0] > pattern.sum(-1)[:, -1]).all()


def test_a_very_negative_sink_is_no_sink() -> None:
    with_sinks = make()
    plain = make(attn_sinks=False)
    plain.load_state_dict(
        {k: v for k, v in with_sinks.state_dict().items() if not k.endswith("sinks")}
    )
    with torch.no_grad():
        for block in with_sinks.blocks:
            block.attn.sinks.fill_(-1e4)
    assert (with_sinks(tokens()) - plain(tokens())).abs().max() <= 1e-5


def test_sinks_have_gradients() -> None:
    model = make()
    model(tokens(), return_type="loss").backward()
    assert model.blocks[0].attn.sinks.grad is not None
    assert model.blocks[0].attn.sinks.grad.abs().sum() > 0


def test_value_biases_stay_unfolded_with_sinks() -> None:
    model = make(positional_embedding_type="rotary")
    with torch.no_grad():
        for block in model.blocks:
            block.attn.b_V.normal_(0, 0.5)
    expected = model(tokens()).log_softmax(-1)
    with pytest.raises(ValueError, match="sink"):
        model.fold_value_biases()
    model.process_weights_()
    assert model.cfg.processing["fold_value_biases"] is False
    assert model.blocks[0].attn.b_V.abs().sum() > 0
    assert (model(tokens()).log_softmax(-1) - expected).abs().max() <= 1e-4


def reference_gpt_oss_moe(moe: Any, x: torch.Tensor, limit: float) -> torch.Tensor:
    """GPT-OSS's MLP token by token, from its definition (transformers' GptOssMLP)."""
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for p in range(x.shape[1]):
            logits = x[b, p] @ moe.W_router + moe.b_router
            top, chosen = logits.topk(moe.experts_per_token)
            for w, e in zip(top.softmax(-1), chosen.tolist()):
                expert = moe.experts[e]
                gate = (x[b, p] @ expert.W_gate + expert.b_gate).clamp(max=limit)
                up = (x[b, p] @ expert.W_in + expert.b_in).clamp(-limit, limit)
                glu = gate * torch.sigmoid(gate * 1.702)
                out[b, p] += w * (((up + 1) * glu) @ expert.W_out + expert.b_out)
    return out


def gpt_oss_moe_model(limit: float) -> anatomist.HookedTransformer:
    return make(
        num_experts=6,
        experts_per_token=3,
        router_bias=True,
        router_softmax_over_topk=True,
        swiglu_limit=limit,
    )


@pytest.mark.parametrize("limit", [0.4, 7.0])
def test_gpt_oss_moe_matches_per_token_reference(limit: float) -> None:
    model = gpt_oss_moe_model(limit)
    _, cache = model.run_with_cache(tokens())
    clamped = 0
    for i, block in enumerate(model.blocks):
        x = cache[f"blocks.{i}.ln2.hook_normalized"] * block.ln2.w
        with torch.no_grad():
            expected = reference_gpt_oss_moe(block.mlp, x, limit)
        assert (cache["mlp_out", i] - expected).abs().max() <= 1e-5
        for e in range(6):  # the expert hooks see both branches before the clamps
            clamped += int((cache[f"blocks.{i}.mlp.experts.{e}.hook_pre"] > limit).sum())
            clamped += int(
                (cache[f"blocks.{i}.mlp.experts.{e}.hook_pre_linear"].abs() > limit).sum()
            )
    assert (clamped > 0) == (limit < 1)


def test_router_bias_takes_a_folded_layernorm_bias() -> None:
    model = make(
        normalization_type="LN",
        num_experts=6,
        experts_per_token=3,
        router_bias=True,
        router_softmax_over_topk=True,
        swiglu_limit=7.0,
    )
    expected = model(tokens()).log_softmax(-1)
    model.process_weights_()
    assert model.cfg.processing["fold_ln"] is True
    assert (model(tokens()).log_softmax(-1) - expected).abs().max() <= 1e-4


def test_swiglu_limit_needs_a_gated_mlp() -> None:
    with pytest.raises(ValueError, match="gated_mlp"):
        anatomist.TransformerConfig(
            n_layers=1, d_model=8, n_ctx=8, d_head=4, d_vocab=5, act_fn="gelu", swiglu_limit=7.0
        )


# A tiny GPT-OSS config.json (keys left out take transformers' GptOssConfig defaults).
TINY_HF: dict[str, Any] = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=8,
    intermediate_size=24,
    vocab_size=101,
    num_local_experts=4,
    num_experts_per_tok=2,
)


@pytest.mark.parametrize(
    ("overrides", "error", "message"),
    [
        ({"swiglu_alpha": 1.5}, NotImplementedError, "swiglu_alpha"),
        (
            {"layer_types": ["chunked_attention", "full_attention"]},
            NotImplementedError,
            "layer_types",
        ),
        ({"num_experts_per_tok": 5}, ValueError, "num_experts_per_tok"),
    ],
)
def test_unsupported_gpt_oss_configs_are_refused(
    overrides: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        family_for_architecture("GptOssForCausalLM").build_config({**TINY_HF, **overrides})


def test_gpt_oss_defaults_follow_transformers() -> None:
    from transformers import GptOssConfig

    hf = GptOssConfig(num_hidden_layers=4).to_dict()
    cfg = family_for_architecture("GptOssForCausalLM").build_config(hf)
    default = family_for_architecture("GptOssForCausalLM").build_config(
        {k: hf[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads")}
        | {"intermediate_size": hf["intermediate_size"], "vocab_size": hf["vocab_size"]}
    )
    for c in (cfg, default):
        assert c.rotary_base == 150000.0 and c.rope_scaling is not None
        assert c.rope_scaling["rope_type"] == "yarn" and c.rope_scaling["factor"] == 32.0
        assert c.layer_types == ["sliding_attention", "full_attention"] * 2
        assert c.sliding_window == 128 and c.swiglu_limit == 7.0
        assert (c.num_experts, c.experts_per_token, c.d_head, c.n_kv_heads) == (128, 4, 64, 8)
