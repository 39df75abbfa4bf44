"""The mixture-of-experts MLP against a per-token reference; its hooks, interventions, weight
processing and loading of transformers' fused expert tensors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

import anatomist
from anatomist.families.registry import family_for_architecture
from anatomist.model.moe import MoE
from tests.families.cases import mixtral as mixtral_cases
from tests.families.cases import qwen2_moe as qwen2_moe_cases
from tests.families.parity import build
from tests.helpers import load, randomize_small_params


def make(**options: Any) -> anatomist.HookedTransformer:
    settings: dict[str, Any] = dict(
        n_layers=2,
        d_model=32,
        n_ctx=32,
        d_head=8,
        d_mlp=24,
        d_vocab=50,
        seed=0,
        act_fn="silu",
        gated_mlp=True,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        num_experts=6,
        experts_per_token=2,
    )
    settings.update(options)
    model = anatomist.HookedTransformer(anatomist.TransformerConfig(**settings))
    randomize_small_params(model)
    return model


def tokens(pos: int = 12) -> torch.Tensor:
    return torch.randint(0, 50, (2, pos), generator=torch.Generator().manual_seed(3))


def reference_moe(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """The MoE output token by token, straight from the definition."""
    out = torch.zeros_like(x)
    for b in range(x.shape[0]):
        for p in range(x.shape[1]):
            probs = (x[b, p] @ moe.W_router).softmax(-1)
            weights, chosen = probs.topk(moe.experts_per_token)
            if moe.cfg.norm_topk_prob:
                weights = weights / weights.sum()
            for w, e in zip(weights, chosen.tolist()):
                out[b, p] += w * moe.experts[e](x[b, p][None])[0]
            if moe.shared_expert is not None:
                gate = torch.sigmoid(x[b, p] @ moe.W_shared_gate)
                out[b, p] += gate * moe.shared_expert(x[b, p][None])[0]
    return out


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"norm_topk_prob": True, "experts_per_token": 3},
        {"d_mlp_shared": 16},
        {"gated_mlp": False, "act_fn": "gelu", "normalization_type": "LN"},
    ],
    ids=["top2", "top3-normalized", "shared-expert", "ungated-ln"],
)
def test_moe_matches_per_token_reference(options: dict[str, Any]) -> None:
    model = make(**options)
    _, cache = model.run_with_cache(tokens())
    for i, block in enumerate(model.blocks):
        x = cache[f"blocks.{i}.ln2.hook_normalized"]
        if model.cfg.normalization_type == "RMS":  # RMSNorm's hook sees x before its weight
            x = x * block.ln2.w
        with torch.no_grad():
            expected = reference_moe(block.mlp, x)
        assert (cache["mlp_out", i] - expected).abs().max() <= 1e-5


def test_expert_hooks_see_the_routed_tokens_and_fire_once_even_when_idle() -> None:
    model = make(num_experts=8, experts_per_token=1)
    calls: dict[str, int] = {}

    def count(tensor: torch.Tensor, hook: anatomist.HookPoint) -> None:
        calls[hook.name or ""] = calls.get(hook.name or "", 0) + 1

    with model.hooks(fwd_hooks=[(lambda name: True, count)]):
        _, cache = model.run_with_cache(tokens(pos=4))  # 8 tokens, 8 experts: some stay idle
    assert set(calls.values()) == {1} and sorted(calls) == sorted(model.resolve_hook_names(None))
    idle = 0
    for i, block in enumerate(model.blocks):
        indices = cache[f"blocks.{i}.mlp.hook_expert_indices"]  # [b, p, k]
        assert indices.shape == (2, 4, 1) and indices.dtype == torch.long
        assert cache[f"blocks.{i}.mlp.hook_expert_weights"].shape == (2, 4, 1)
        x = cache[f"blocks.{i}.ln2.hook_normalized"] * block.ln2.w
        for e, expert in enumerate(block.mlp.experts):
            pre = cache[f"blocks.{i}.mlp.experts.{e}.hook_pre"]  # [n_routed, d_mlp]
            b, p = (indices == e).any(-1).nonzero(as_tuple=True)
            assert pre.shape == (len(b), 24)
            assert cache[f"blocks.{i}.mlp.experts.{e}.hook_post"].shape == (len(b), 24)
            if len(b) == 0:
                idle += 1
            else:  # rows are the routed tokens in (batch, position) order
                assert (pre - (x[b, p] @ expert.W_gate + expert.b_gate)).abs().max() <= 1e-5
    assert idle > 0  # the empty case was exercised


def test_routing_hooks_steer_the_experts() -> None:
    model = make()
    x = torch.randn(2, 5, 32)
    moe = model.blocks[0].mlp

    def to_expert_3(indices: torch.Tensor, hook: Any) -> torch.Tensor:
        return torch.full_like(indices, 3)

    def halves(weights: torch.Tensor, hook: Any) -> torch.Tensor:
        return torch.full_like(weights, 0.5)

    with model.hooks(
        fwd_hooks=[
            ("blocks.0.mlp.hook_expert_indices", to_expert_3),
            ("blocks.0.mlp.hook_expert_weights", halves),
        ]
    ):
        steered = moe(x)
    with torch.no_grad():
        assert (steered - moe.experts[3](x)).abs().max() <= 1e-5  # two halves of expert 3

    def out_of_range(indices: torch.Tensor, hook: Any) -> torch.Tensor:
        return torch.full_like(indices, 6)

    hooks = [("blocks.0.mlp.hook_expert_indices", out_of_range)]
    with model.hooks(fwd_hooks=hooks), pytest.raises(ValueError, match="outside 0..5"):
        moe(x)


def test_gradients_reach_router_and_experts() -> None:
    model = make()
    model(tokens(), return_type="loss").backward()
    moe = model.blocks[0].mlp
    assert moe.W_router.grad is not None and moe.W_router.grad.abs().sum() > 0
    assert sum(int(e.W_in.grad is not None and e.W_in.grad.abs().sum() > 0) for e in moe.experts)


def test_dense_weight_names_point_to_the_experts() -> None:
    model = make()
    with pytest.raises(AttributeError, match=r"mlp\.experts\[e\]\.W_in"):
        _ = model.blocks[0].mlp.W_in
    with pytest.raises(ValueError, match="experts_per_token"):
        make(experts_per_token=7)


def test_weight_processing_keeps_log_probs_with_layernorm() -> None:
    model = make(normalization_type="LN")
    with torch.no_grad():
        for block in model.blocks:
            block.ln2.b.zero_()  # a router has no bias to take a folded LayerNorm bias
    expected = model(tokens()).log_softmax(-1)
    model.process_weights_()
    assert model.cfg.normalization_type == "LNPre"
    assert (model(tokens()).log_softmax(-1) - expected).abs().max() <= 1e-4
    for expert in model.blocks[0].mlp.experts:  # centred writing and reading weights
        assert expert.W_out.mean(-1).abs().max() <= 1e-5
        assert expert.W_in.mean(0).abs().max() <= 1e-5


def test_folding_a_layernorm_bias_into_the_router_is_refused() -> None:
    model = make(normalization_type="LN")
    with pytest.raises(NotImplementedError, match="router bias"):
        model.process_weights_()


@pytest.mark.parametrize(
    "case", [mixtral_cases.CASES["top2-of-4-gqa"], qwen2_moe_cases.CASES["top1-of-8"]]
)
def test_loads_transformers_fused_experts_from_a_model_object(case: Any, tmp_path: Path) -> None:
    hf = build(case, tmp_path)
    assert any(name.endswith("experts.gate_up_proj") for name in hf.state_dict())
    model = anatomist.HookedTransformer.from_pretrained_no_processing(
        str(tmp_path), hf_model=hf, progress=False
    )
    ids = tokens()
    with torch.no_grad():
        assert (model(ids) - hf(ids).logits).abs().max() <= 1e-5
    from_disk = load(tmp_path).state_dict()  # the per-expert tensors of the saved checkpoint
    for key, value in model.state_dict().items():
        assert torch.equal(value, from_disk[key]), key


@pytest.mark.parametrize(
    ("architecture", "overrides", "message"),
    [
        ("OlmoeForCausalLM", {"clip_qkv": 8.0}, "clip_qkv"),
    ],
)
def test_unsupported_configs_are_refused(
    architecture: str, overrides: dict[str, Any], message: str
) -> None:
    hf = dict(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=48,
        moe_intermediate_size=24,
        shared_expert_intermediate_size=40,
        vocab_size=101,
        num_experts=4,
        num_experts_per_tok=2,
    )
    with pytest.raises(NotImplementedError, match=message):
        family_for_architecture(architecture).build_config({**hf, **overrides})
