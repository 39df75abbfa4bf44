"""The hook API: HookPoint, HookedRootModule, hooks() contexts, run_with_hooks, backward hooks,
opt-in hook points and the hook-contract invariants (on a GPT-2-like and a Llama-like model)."""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import anatomist
from anatomist import (
    HookDisabledError,
    HookedRootModule,
    HookPoint,
    HookShapeError,
    UnknownHookError,
)
from tests.helpers import BUILDERS, gpt2_like, llama_like, randomize_small_params

# --- builders -----------------------------------------------------------------------------------


def tokens(batch: int = 2, pos: int = 7, seed: int = 1, vocab: int = 50) -> Tensor:
    return torch.randint(0, vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def model() -> anatomist.HookedTransformer:
    return gpt2_like()


@pytest.fixture(params=list(BUILDERS))
def any_model(request: pytest.FixtureRequest) -> anatomist.HookedTransformer:
    return BUILDERS[request.param]()


def no_hooks_left(model: HookedRootModule) -> bool:
    return all(
        not hp._forward_hooks and not hp.fwd_hooks and not hp.bwd_hooks
        for hp in model.hook_dict.values()
    )


def maxdiff(a: Tensor, b: Tensor) -> float:
    return (a - b).abs().max().item()


# --- adding hooks and reading values ------------------------------------------------------------


def test_fwd_hook_by_name_reads_embedding_values(model: anatomist.HookedTransformer) -> None:
    toks = tokens()
    seen: dict[str, Tensor] = {}

    def grab(act: Tensor, hook: HookPoint) -> None:
        seen[hook.name] = act.detach().clone()  # type: ignore[index]

    model.add_hook("hook_embed", grab)
    model.add_hook("hook_pos_embed", grab)
    model(toks)
    assert torch.equal(seen["hook_embed"], model.W_E.detach()[toks])
    pos = seen["hook_pos_embed"]
    expected_pos = model.W_pos.detach()[: toks.shape[1]]
    assert torch.equal(pos.expand(toks.shape[0], -1, -1), expected_pos.expand(2, -1, -1))


def test_fwd_hook_by_predicate_hits_every_matching_point(
    model: anatomist.HookedTransformer,
) -> None:
    calls: list[str] = []
    model.add_hook(
        lambda name: name.endswith("attn.hook_z"), lambda a, hook: calls.append(hook.name)
    )
    model(tokens())
    assert calls == ["blocks.0.attn.hook_z", "blocks.1.attn.hook_z"]


def test_replacing_an_activation_changes_output_as_computed_by_hand(
    model: anatomist.HookedTransformer,
) -> None:
    toks = tokens()
    clean = model(toks)
    # Zero residual stream at the end: the logits are then ln_final(0) @ W_U + b_U, and a
    # LayerNorm of a zero vector is exactly its bias.
    out = model.run_with_hooks(
        toks, fwd_hooks=[("blocks.1.hook_resid_post", lambda a, hook: torch.zeros_like(a))]
    )
    expected = model.ln_final.b.detach() @ model.W_U.detach() + model.b_U.detach()
    assert maxdiff(out, expected.expand_as(out)) < 1e-5
    assert maxdiff(out, clean) > 1e-2


def test_hook_returning_none_leaves_activation_unchanged(
    model: anatomist.HookedTransformer,
) -> None:
    toks = tokens()
    clean = model(toks)
    calls = Counter[str]()

    def noop(act: Tensor, hook: HookPoint) -> None:
        calls[hook.name] += 1  # type: ignore[index]

    # Skip pattern/scores/norm points: hooking them switches to explicit kernels (float error).
    out = model.run_with_hooks(
        toks, fwd_hooks=[(lambda n: "attn.hook_" not in n and "ln" not in n, noop)]
    )
    assert sum(calls.values()) > 10
    assert torch.equal(out, clean)


def test_hook_edit_in_place_and_return_same_tensor(model: anatomist.HookedTransformer) -> None:
    toks = tokens()

    def zero_first(act: Tensor, hook: HookPoint) -> Tensor:
        act[:, 0] = 0.0
        return act

    out = model.run_with_hooks(toks, fwd_hooks=[("blocks.1.hook_resid_post", zero_first)])
    expected = model.ln_final.b.detach() @ model.W_U.detach() + model.b_U.detach()
    assert maxdiff(out[:, 0], expected.expand_as(out[:, 0])) < 1e-5
    assert maxdiff(out[:, 1], expected.expand_as(out[:, 1])) > 1e-2


def test_prepend_orders_hooks_and_chains_replacements(model: anatomist.HookedTransformer) -> None:
    order: list[str] = []
    seen: dict[str, Tensor] = {}

    def double(act: Tensor, hook: HookPoint) -> Tensor:
        order.append("double")
        return act * 2

    def plus_one(act: Tensor, hook: HookPoint) -> Tensor:
        order.append("plus_one")
        return act + 1

    def first(act: Tensor, hook: HookPoint) -> None:
        order.append("first")
        seen["first"] = act.detach().clone()

    def last(act: Tensor, hook: HookPoint) -> None:
        order.append("last")
        seen["last"] = act.detach().clone()

    name = "blocks.0.hook_resid_pre"
    model.add_hook(name, double)
    model.add_hook(name, plus_one)
    model.add_hook(name, last)
    model.add_hook(name, first, prepend=True)
    model(tokens())
    assert order == ["first", "double", "plus_one", "last"]
    assert torch.allclose(seen["last"], seen["first"] * 2 + 1)


def test_permanent_hooks_survive_reset(model: anatomist.HookedTransformer) -> None:
    calls = Counter[str]()
    model.add_perma_hook("hook_embed", lambda a, hook: calls.update(["perma"]))
    model.add_hook("hook_embed", lambda a, hook: calls.update(["temp"]), is_permanent=True)
    model.add_hook("hook_embed", lambda a, hook: calls.update(["plain"]))
    toks = tokens()
    model(toks)
    assert calls == Counter(perma=1, temp=1, plain=1)
    model.reset_hooks()
    with model.hooks(fwd_hooks=[("hook_embed", lambda a, hook: calls.update(["ctx"]))]):
        model(toks)
    model(toks)
    assert calls == Counter(perma=3, temp=3, plain=1, ctx=1)
    model.reset_hooks(including_permanent=True)
    model(toks)
    assert calls == Counter(perma=3, temp=3, plain=1, ctx=1)
    assert no_hooks_left(model)


def test_hook_ctx_and_clear_contexts(model: anatomist.HookedTransformer) -> None:
    def count(act: Tensor, hook: HookPoint) -> None:
        hook.ctx["n"] = hook.ctx.get("n", 0) + 1

    model.add_hook(lambda n: n.endswith("hook_resid_pre"), count)
    toks = tokens()
    model(toks)
    model(toks)
    hp0, hp1 = (
        model.hook_dict["blocks.0.hook_resid_pre"],
        model.hook_dict["blocks.1.hook_resid_pre"],
    )
    assert hp0.ctx == {"n": 2} and hp1.ctx == {"n": 2}
    assert hp0.ctx is not hp1.ctx
    assert model.hook_dict["hook_embed"].ctx == {}
    hp0.clear_context()
    assert hp0.ctx == {} and hp1.ctx == {"n": 2}
    model.clear_contexts()
    assert hp1.ctx == {}
    model(toks)
    model.reset_hooks(clear_contexts=False)
    assert hp0.ctx == {"n": 1}
    model.add_hook("blocks.0.hook_resid_pre", count)
    model(toks)
    model.reset_hooks()  # clears contexts by default
    assert hp0.ctx == {}


def test_hook_name_and_layer(any_model: anatomist.HookedTransformer) -> None:
    seen: list[tuple[str, int | None]] = []

    def record(act: Tensor, hook: HookPoint) -> None:
        layer = hook.layer() if hook.name.startswith("blocks.") else None  # type: ignore[union-attr]
        seen.append((hook.name, layer))  # type: ignore[arg-type]

    any_model.add_hook(lambda n: n.endswith(("hook_q", "hook_mlp_out", "hook_embed")), record)
    any_model(tokens())
    assert seen == [
        ("hook_embed", None),
        ("blocks.0.attn.hook_q", 0),
        ("blocks.0.hook_mlp_out", 0),
        ("blocks.1.attn.hook_q", 1),
        ("blocks.1.hook_mlp_out", 1),
    ]
    assert any_model.hook_dict["blocks.1.ln2.hook_scale"].layer() == 1
    with pytest.raises(ValueError, match="hook_embed"):
        any_model.hook_dict["hook_embed"].layer()
    with pytest.raises(ValueError):
        HookPoint().layer()
    assert all(name == hp.name for name, hp in any_model.hook_dict.items())


def test_remove_hooks_by_direction(model: anatomist.HookedTransformer) -> None:
    calls = Counter[str]()
    name = "blocks.1.hook_resid_pre"
    model.add_hook(name, lambda a, hook: calls.update(["fwd"]))
    model.add_hook(name, lambda g, hook: calls.update(["bwd"]), dir="bwd")
    hp = model.hook_dict[name]
    toks = tokens()

    def step() -> None:
        model.zero_grad()
        model(toks, return_type="loss").backward()

    step()
    assert calls == Counter(fwd=1, bwd=1)
    hp.remove_hooks("bwd")
    step()
    assert calls == Counter(fwd=2, bwd=1)
    model.add_hook(name, lambda g, hook: calls.update(["bwd"]), dir="bwd")
    hp.remove_hooks()  # default: forward only
    step()
    assert calls == Counter(fwd=2, bwd=2)
    hp.remove_hooks("both")
    step()
    assert calls == Counter(fwd=2, bwd=2)
    with pytest.raises(ValueError, match="fwd"):
        hp.remove_hooks("sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fwd"):
        model.add_hook(name, lambda a, hook: None, dir="up")  # type: ignore[arg-type]

    # reset_hooks(direction=...) on the whole model.
    model.add_hook(name, lambda a, hook: calls.update(["fwd"]))
    model.add_hook(name, lambda g, hook: calls.update(["bwd"]), dir="bwd")
    model.reset_hooks(direction="fwd")
    step()
    assert calls == Counter(fwd=2, bwd=3)
    model.reset_hooks(direction="bwd")
    step()
    assert calls == Counter(fwd=2, bwd=3)


def test_handle_returned_by_hookpoint_add_hook(model: anatomist.HookedTransformer) -> None:
    calls: list[int] = []
    hp = model.hook_dict["hook_embed"]
    handle = hp.add_hook(lambda a, hook: calls.append(1))
    assert isinstance(handle, anatomist.HookHandle) and anatomist.LensHandle is anatomist.HookHandle
    assert handle.direction == "fwd" and not handle.is_permanent
    model(tokens())
    handle.remove()
    model(tokens())
    assert calls == [1]


# --- errors when adding hooks --------------------------------------------------------------------


def test_unknown_hook_name_suggests_close_names(model: anatomist.HookedTransformer) -> None:
    with pytest.raises(UnknownHookError) as info:
        model.add_hook("blocks.0.attn.hook_patern", lambda a, hook: None)
    assert "blocks.0.attn.hook_pattern" in str(info.value)
    assert isinstance(info.value, KeyError)
    assert no_hooks_left(model)


OPT_IN = [
    ("blocks.0.attn.hook_result", "set_use_attn_result"),
    ("blocks.0.hook_q_input", "set_use_split_qkv_input"),
    ("blocks.1.hook_k_input", "set_use_split_qkv_input"),
    ("blocks.0.hook_mlp_in", "set_use_hook_mlp_in"),
    ("blocks.0.hook_attn_in", "set_use_attn_in"),
    ("hook_tokens", "set_use_hook_tokens"),
]


@pytest.mark.parametrize(("name", "setter"), OPT_IN)
def test_opt_in_hook_that_is_off_raises_naming_the_setter(
    model: anatomist.HookedTransformer, name: str, setter: str
) -> None:
    with pytest.raises(HookDisabledError, match=setter) as info:
        model.add_hook(name, lambda a, hook: None)
    assert name in str(info.value)
    with (
        pytest.raises(HookDisabledError, match=setter),
        model.hooks(fwd_hooks=[(name, lambda a, hook: None)]),
    ):
        pass
    with pytest.raises(HookDisabledError, match=setter):
        model.run_with_cache(tokens(), names_filter=name)
    with pytest.raises(HookDisabledError, match=setter):
        model.run_with_cache(tokens(), names_filter=["hook_embed", name])
    assert no_hooks_left(model)
    getattr(model, setter)(True)
    calls: list[str] = []
    model.add_hook(name, lambda a, hook: calls.append(hook.name))
    model(tokens())
    assert calls == [name]


def test_predicate_skips_opt_in_hooks_that_are_off(model: anatomist.HookedTransformer) -> None:
    calls = Counter[str]()
    model.add_hook(lambda n: True, lambda a, hook: calls.update([hook.name]))
    assert not any(model.hook_dict[n].opt_in for n in calls)
    model(tokens())
    expected = {n for n, hp in model.hook_dict.items() if hp.opt_in is None}
    assert set(calls) == expected


def test_wrong_shape_replacement_names_hook_and_shapes(model: anatomist.HookedTransformer) -> None:
    with pytest.raises(HookShapeError) as info:
        model.run_with_hooks(
            tokens(), fwd_hooks=[("blocks.0.hook_mlp_out", lambda a, hook: a[:, :-1])]
        )
    msg = str(info.value)
    assert "blocks.0.hook_mlp_out" in msg and "(2, 6, 32)" in msg and "(2, 7, 32)" in msg
    assert no_hooks_left(model)
    with pytest.raises(TypeError, match="hook_embed"):
        model.run_with_hooks(tokens(), fwd_hooks=[("hook_embed", lambda a, hook: 3.0)])
    # Backward: a replacement gradient must keep the shape too.
    with (
        pytest.raises(HookShapeError, match="blocks.0.hook_resid_mid"),
        model.hooks(bwd_hooks=[("blocks.0.hook_resid_mid", lambda g, hook: g[0])]),
    ):
        model(tokens(), return_type="loss").backward()


# --- hooks() contexts and run_with_hooks -------------------------------------------------------


def test_nested_hook_contexts_remove_only_their_own_hooks(
    model: anatomist.HookedTransformer,
) -> None:
    calls = Counter[str]()
    toks = tokens()

    def tag(label: str) -> Any:
        return lambda a, hook: calls.update([label])

    with model.hooks(fwd_hooks=[("hook_embed", tag("outer"))]):
        model(toks)
        assert calls == Counter(outer=1)
        with model.hooks(
            fwd_hooks=[("hook_embed", tag("inner")), (lambda n: "resid_pre" in n, tag("pre"))]
        ):
            model(toks)
            assert calls == Counter(outer=2, inner=1, pre=2)
        model(toks)
        assert calls == Counter(outer=3, inner=1, pre=2)
        assert len(model.hook_dict["hook_embed"].fwd_hooks) == 1
    model(toks)
    assert calls == Counter(outer=3, inner=1, pre=2)
    assert no_hooks_left(model)
    assert model.context_level == 0


def test_hooks_context_removes_hooks_on_error(model: anatomist.HookedTransformer) -> None:
    with (
        pytest.raises(RuntimeError, match="boom"),
        model.hooks(fwd_hooks=[("hook_embed", lambda a, hook: None)]),
    ):
        raise RuntimeError("boom")
    assert no_hooks_left(model)
    assert model.context_level == 0
    # A bad name in the middle of the list leaves nothing behind either.
    with (
        pytest.raises(UnknownHookError),
        model.hooks(
            fwd_hooks=[("hook_embed", lambda a, hook: None), ("nope", lambda a, hook: None)]
        ),
    ):
        pass
    assert no_hooks_left(model)


def test_reset_hooks_end_false_keeps_hooks(model: anatomist.HookedTransformer) -> None:
    calls = Counter[str]()
    toks = tokens()
    with model.hooks(fwd_hooks=[("hook_embed", lambda a, hook: calls.update(["outer"]))]):
        with model.hooks(
            fwd_hooks=[("hook_embed", lambda a, hook: calls.update(["kept"]))],
            reset_hooks_end=False,
        ):
            pass
        # A sibling block at the same nesting level must not take the kept hook with it.
        with model.hooks(fwd_hooks=[("hook_embed", lambda a, hook: calls.update(["sibling"]))]):
            pass
        model(toks)
        assert calls == Counter(outer=1, kept=1)
    model(toks)
    assert calls == Counter(outer=1, kept=2)
    model.reset_hooks()
    model(toks)
    assert calls == Counter(outer=1, kept=2)


def test_run_with_hooks_equals_manual_hooks_and_cleans_up(
    any_model: anatomist.HookedTransformer,
) -> None:
    toks = tokens()

    def scale_head(act: Tensor, hook: HookPoint) -> Tensor:
        act = act.clone()
        act[:, :, 0] *= 3.0
        return act

    def shift(act: Tensor, hook: HookPoint) -> Tensor:
        return act + 0.5

    hooks = [("blocks.0.attn.hook_v", scale_head), (lambda n: n.endswith("mlp.hook_post"), shift)]
    out = any_model.run_with_hooks(toks, fwd_hooks=hooks)
    assert no_hooks_left(any_model)
    for name, fn in hooks:
        any_model.add_hook(name, fn)
    manual = any_model(toks)
    any_model.reset_hooks()
    assert torch.equal(out, manual)
    assert maxdiff(out, any_model(toks)) > 1e-3
    # Keyword arguments reach forward.
    loss = any_model.run_with_hooks(toks, return_type="loss", fwd_hooks=hooks)
    assert loss.shape == () and torch.isclose(
        loss, anatomist.utils.lm_cross_entropy_loss(out, toks)
    )
    # reset_hooks_end=False keeps them.
    any_model.run_with_hooks(toks, fwd_hooks=hooks, reset_hooks_end=False)
    assert torch.equal(any_model(toks), manual)
    any_model.reset_hooks()
    assert no_hooks_left(any_model)


# --- ablation by hand ------------------------------------------------------------------------------


def test_zero_ablating_a_head_matches_hand_computation(model: anatomist.HookedTransformer) -> None:
    toks = tokens()
    clean, cache = model.run_with_cache(
        toks, names_filter=["blocks.0.attn.hook_z", "blocks.0.hook_resid_pre"]
    )
    z = cache["blocks.0.attn.hook_z"].clone()
    z[:, :, 1] = 0.0
    W_O, b_O = model.W_O[0].detach(), model.b_O[0].detach()
    attn_out = torch.einsum("bphd,hdm->bpm", z, W_O) + b_O

    def ablate(act: Tensor, hook: HookPoint) -> Tensor:
        act = act.clone()
        act[:, :, 1] = 0.0
        return act

    via_z = model.run_with_hooks(toks, fwd_hooks=[("blocks.0.attn.hook_z", ablate)])
    via_out = model.run_with_hooks(
        toks, fwd_hooks=[("blocks.0.hook_attn_out", lambda a, hook: attn_out)]
    )
    assert maxdiff(via_z, via_out) <= 1e-5
    assert maxdiff(via_z, clean) > 1e-3

    # The rest of block 0 by hand (LayerNorm, gelu_new MLP), then the model from layer 1 on.
    blk = model.blocks[0]
    resid_mid = cache["blocks.0.hook_resid_pre"] + attn_out
    x = resid_mid - resid_mid.mean(-1, keepdim=True)
    x = x / (x.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    x = x * blk.ln2.w.detach() + blk.ln2.b.detach()
    pre = x @ blk.mlp.W_in.detach() + blk.mlp.b_in.detach()
    post = 0.5 * pre * (1 + torch.tanh(math.sqrt(2 / math.pi) * (pre + 0.044715 * pre**3)))
    resid_post = resid_mid + post @ blk.mlp.W_out.detach() + blk.mlp.b_out.detach()
    with torch.no_grad():
        by_hand = model(resid_post, start_at_layer=1)
    assert maxdiff(via_z, by_hand) <= 1e-5


# --- backward hooks ----------------------------------------------------------------------------------


def test_bwd_hook_sees_the_gradient(any_model: anatomist.HookedTransformer) -> None:
    toks = tokens()
    # Reference: make blocks.1.hook_resid_pre a leaf via a forward hook, and ask autograd.
    leaf: dict[str, Tensor] = {}

    def make_leaf(act: Tensor, hook: HookPoint) -> Tensor:
        leaf["x"] = act.detach().requires_grad_(True)
        return leaf["x"]

    loss = any_model.run_with_hooks(
        toks, return_type="loss", fwd_hooks=[("blocks.1.hook_resid_pre", make_leaf)]
    )
    (reference,) = torch.autograd.grad(loss, leaf["x"])

    grads: dict[str, Tensor] = {}

    def save(grad: Tensor, hook: HookPoint) -> None:
        grads[hook.name] = grad.clone()  # type: ignore[index]

    with any_model.hooks(
        bwd_hooks=[("blocks.1.hook_resid_pre", save), ("blocks.0.hook_resid_post", save)]
    ):
        any_model(toks, return_type="loss").backward()
    assert no_hooks_left(any_model)
    assert maxdiff(grads["blocks.1.hook_resid_pre"], reference) <= 1e-7
    assert torch.equal(grads["blocks.0.hook_resid_post"], grads["blocks.1.hook_resid_pre"])
    assert reference.abs().max() > 0


def test_bwd_hook_replacing_gradient(model: anatomist.HookedTransformer) -> None:
    toks = tokens()
    with model.hooks(bwd_hooks=[("hook_embed", lambda g, hook: torch.zeros_like(g))]):
        model(toks, return_type="loss").backward()
    assert model.W_E.grad is not None and model.W_pos.grad is not None
    assert torch.count_nonzero(model.W_E.grad) == 0
    assert model.W_pos.grad.abs().max() > 0


def test_bwd_replacement_reaches_upstream_hooks(any_model: anatomist.HookedTransformer) -> None:
    """A gradient replaced at blocks.1.hook_resid_pre is what flows into blocks.0 (the two points
    carry the same tensor): upstream backward hooks and weights see the replacement."""
    toks = tokens()
    any_model(toks, return_type="loss").backward()
    clean_grad = any_model.W_E.grad.clone()  # type: ignore[union-attr]
    any_model.zero_grad()

    seen: dict[str, Tensor] = {}

    def save(grad: Tensor, hook: HookPoint) -> None:
        seen[hook.name] = grad.clone()  # type: ignore[index]

    with any_model.hooks(
        bwd_hooks=[
            ("blocks.0.hook_resid_post", save),
            ("blocks.1.hook_resid_pre", lambda g, hook: g * 2),
            ("blocks.1.hook_resid_pre", save),
        ]
    ):
        any_model(toks, return_type="loss").backward()
    # Residual stream is the only path from the embedding to the loss: W_E's grad doubles.
    assert torch.allclose(any_model.W_E.grad, 2 * clean_grad, atol=1e-7)  # type: ignore[arg-type]
    assert torch.equal(seen["blocks.0.hook_resid_post"], seen["blocks.1.hook_resid_pre"])

    any_model.zero_grad()
    with any_model.hooks(
        bwd_hooks=[
            ("blocks.0.hook_resid_post", save),
            ("blocks.1.hook_resid_pre", lambda g, hook: torch.zeros_like(g)),
        ]
    ):
        any_model(toks, return_type="loss").backward()
    assert torch.count_nonzero(seen["blocks.0.hook_resid_post"]) == 0
    assert torch.count_nonzero(any_model.W_E.grad) == 0  # type: ignore[arg-type]


def test_run_with_hooks_bwd_hooks_fire_for_that_run_only(
    model: anatomist.HookedTransformer,
) -> None:
    toks = tokens()
    calls: list[tuple[int, ...]] = []
    loss = model.run_with_hooks(
        toks,
        return_type="loss",
        bwd_hooks=[("blocks.0.hook_mlp_out", lambda g, hook: calls.append(tuple(g.shape)))],
    )
    assert no_hooks_left(model)
    loss.backward()
    assert calls == [(2, 7, 32)]
    model(toks, return_type="loss").backward()
    assert calls == [(2, 7, 32)]


def test_bwd_hook_with_fwd_hook_on_same_point(model: anatomist.HookedTransformer) -> None:
    """Backward hooks see the gradient w.r.t. the activation that flows on (after fwd edits)."""
    toks = tokens()
    grads: list[Tensor] = []
    name = "blocks.0.hook_attn_out"
    with model.hooks(
        fwd_hooks=[(name, lambda a, hook: a * 0.5)],
        bwd_hooks=[(name, lambda g, hook: grads.append(g.clone()))],
    ):
        model(toks, return_type="loss").backward()
    # Gradient of the loss w.r.t. resid_mid equals that w.r.t. attn_out (resid_mid = pre + out).
    leaf: dict[str, Tensor] = {}

    def make_leaf(act: Tensor, hook: HookPoint) -> Tensor:
        leaf["x"] = act.detach().requires_grad_(True)
        return leaf["x"]

    loss = model.run_with_hooks(
        toks,
        return_type="loss",
        fwd_hooks=[(name, lambda a, hook: a * 0.5), ("blocks.0.hook_resid_mid", make_leaf)],
    )
    (reference,) = torch.autograd.grad(loss, leaf["x"])
    assert len(grads) == 1 and maxdiff(grads[0], reference) <= 1e-7


# --- every hook fires once; opt-in hooks ----------------------------------------------------------


def count_fires(model: anatomist.HookedTransformer, toks: Tensor, **kw: Any) -> Counter[str]:
    calls = Counter[str]()
    with model.hooks(fwd_hooks=[(lambda n: True, lambda a, hook: calls.update([hook.name]))]):
        model(toks, **kw)
    return calls


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_every_enabled_hook_fires_once_opt_ins_never(kind: str) -> None:
    model = BUILDERS[kind]()
    calls = count_fires(model, tokens())
    for name, hp in model.hook_dict.items():
        assert calls[name] == (0 if hp.opt_in else 1), name
    opt_ins = {n for n, hp in model.hook_dict.items() if hp.opt_in}
    assert {
        "hook_tokens",
        "blocks.0.attn.hook_result",
        "blocks.0.hook_attn_in",
        "blocks.0.hook_q_input",
        "blocks.0.hook_k_input",
        "blocks.0.hook_v_input",
        "blocks.0.hook_mlp_in",
    } <= opt_ins


SINGLE_OPT_INS = {
    "gpt2": [
        "set_use_attn_result",
        "set_use_hook_mlp_in",
        "set_use_hook_tokens",
        "set_use_attn_in",
    ],
    "llama": ["set_use_attn_result", "set_use_hook_mlp_in", "set_use_hook_tokens"],
}


@pytest.mark.parametrize(
    ("kind", "setter"), [(k, s) for k, setters in SINGLE_OPT_INS.items() for s in setters]
)
def test_each_hook_fires_once_with_an_opt_in_on(kind: str, setter: str) -> None:
    model = BUILDERS[kind]()
    getattr(model, setter)(True)
    calls = count_fires(model, tokens())
    for name, hp in model.hook_dict.items():
        assert calls[name] == (1 if model._opt_in_enabled(hp) else 0), name
    assert any(calls[n] == 1 for n, hp in model.hook_dict.items() if hp.opt_in)


SPLIT_QKV_LN1 = (
    "block.py: with use_split_qkv_input, ln1 runs once per q/k/v input, so ln1.hook_scale and "
    "ln1.hook_normalized fire 3 times per forward"
)
BOTH_ATTN_IN = (
    "block.py: with use_split_qkv_input and use_attn_in both on, hook_attn_in is enabled but "
    "never fires (split_qkv wins the if/elif)"
)


@pytest.mark.parametrize(
    ("kind", "setters"),
    [
        pytest.param(
            "gpt2",
            ["set_use_split_qkv_input"],
        ),
        pytest.param(
            "llama",
            [
                "set_use_split_qkv_input",
                "set_use_attn_result",
                "set_use_hook_mlp_in",
                "set_use_hook_tokens",
            ],
        ),
        pytest.param(
            "gpt2",
            [
                "set_use_split_qkv_input",
                "set_use_attn_in",
                "set_use_attn_result",
                "set_use_hook_mlp_in",
                "set_use_hook_tokens",
            ],
        ),
    ],
)
def test_each_hook_fires_once_with_all_opt_ins_on(kind: str, setters: list[str]) -> None:
    model = BUILDERS[kind]()
    for setter in setters:
        getattr(model, setter)(True)
    calls = count_fires(model, tokens())
    assert {n: c for n, c in calls.items() if c != 1} == {}
    silent = [n for n, hp in model.hook_dict.items() if calls[n] == 0]
    assert silent == [n for n, hp in model.hook_dict.items() if not model._opt_in_enabled(hp)]


def test_split_qkv_hooks_fire_once_and_ln1_sees_them(
    any_model: anatomist.HookedTransformer,
) -> None:
    any_model.set_use_split_qkv_input(True)
    calls = count_fires(any_model, tokens())
    for i in range(any_model.cfg.n_layers):
        for part in "qkv":
            assert calls[f"blocks.{i}.hook_{part}_input"] == 1
    for name in any_model.hook_dict:
        if ".ln1." not in name and "attn_in" not in name:
            assert calls[name] == (1 if any_model._opt_in_enabled(any_model.hook_dict[name]) else 0)


def test_opt_in_hooks_have_documented_shapes_and_values_gpt2() -> None:
    model = gpt2_like()
    for setter in (
        "set_use_attn_result",
        "set_use_split_qkv_input",
        "set_use_hook_mlp_in",
        "set_use_hook_tokens",
    ):
        getattr(model, setter)(True)
    toks = tokens(batch=3, pos=5)
    _, cache = model.run_with_cache(toks)
    b, p, h, d = 3, 5, 4, 32
    assert torch.equal(cache["hook_tokens"], toks)
    for i in range(2):
        result = cache[f"blocks.{i}.attn.hook_result"]
        assert result.shape == (b, p, h, d)
        by_hand = torch.einsum(
            "bphe,hed->bphd", cache[f"blocks.{i}.attn.hook_z"], model.W_O[i].detach()
        )
        assert maxdiff(result, by_hand) <= 1e-6
        for part in "qkv":
            x = cache[f"blocks.{i}.hook_{part}_input"]
            assert x.shape == (b, p, h, d)
            assert torch.equal(
                x, cache[f"blocks.{i}.hook_resid_pre"][:, :, None].expand(-1, -1, h, -1)
            )
        assert cache[f"blocks.{i}.hook_mlp_in"].shape == (b, p, d)
        assert torch.equal(cache[f"blocks.{i}.hook_mlp_in"], cache[f"blocks.{i}.hook_resid_mid"])

    model2 = gpt2_like()
    model2.set_use_attn_in(True)
    _, cache2 = model2.run_with_cache(toks)
    assert cache2["blocks.1.hook_attn_in"].shape == (b, p, h, d)
    assert torch.equal(
        cache2["blocks.1.hook_attn_in"],
        cache2["blocks.1.hook_resid_pre"][:, :, None].expand(-1, -1, h, -1),
    )


def test_opt_in_hooks_shapes_under_gqa() -> None:
    model = llama_like()
    model.set_use_split_qkv_input(True)
    model.set_use_attn_result(True)
    _, cache = model.run_with_cache(tokens(batch=2, pos=6))
    assert cache["blocks.0.hook_q_input"].shape == (2, 6, 4, 32)
    assert cache["blocks.0.hook_k_input"].shape == (2, 6, 2, 32)
    assert cache["blocks.0.hook_v_input"].shape == (2, 6, 2, 32)
    assert cache["blocks.0.attn.hook_result"].shape == (2, 6, 4, 32)
    assert cache["blocks.0.attn.hook_k"].shape == (2, 6, 2, 8)
    assert cache["blocks.0.attn.hook_q"].shape == (2, 6, 4, 8)
    with pytest.raises(ValueError, match="split_qkv"):
        model.set_use_attn_in(True)


def test_editing_one_q_input_head_changes_only_that_head() -> None:
    model = gpt2_like()
    model.set_use_split_qkv_input(True)
    toks = tokens()
    _, clean = model.run_with_cache(
        toks, names_filter=lambda n: n.startswith("blocks.0.attn.hook_")
    )

    direction = torch.randn(32, generator=torch.Generator().manual_seed(5))

    def edit(act: Tensor, hook: HookPoint) -> Tensor:  # not a constant: LayerNorm removes those
        act = act.clone()
        act[:, :, 2] += direction
        return act

    with model.hooks(fwd_hooks=[("blocks.0.hook_q_input", edit)]):
        _, cache = model.run_with_cache(
            toks, names_filter=lambda n: n.startswith("blocks.0.attn.hook_")
        )
    changed = (
        (cache["blocks.0.attn.hook_q"] - clean["blocks.0.attn.hook_q"]).abs().amax(dim=(0, 1, 3))
    )
    assert changed[2] > 1e-3
    assert changed[[0, 1, 3]].max() == 0
    assert torch.equal(cache["blocks.0.attn.hook_k"], clean["blocks.0.attn.hook_k"])


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_pattern_path_matches_fused_attention(kind: str) -> None:
    model = BUILDERS[kind]()
    toks = tokens(batch=3, pos=9)
    fused = model(toks)
    explicit = model.run_with_hooks(
        toks, fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda a, hook: None)]
    )
    assert maxdiff(fused, explicit) <= 1e-5
    scores = model.run_with_hooks(
        toks, fwd_hooks=[("blocks.1.attn.hook_attn_scores", lambda a, hook: None)]
    )
    assert maxdiff(fused, scores) <= 1e-5
    # Padded batch (left padding): both paths agree on the real tokens.
    mask = torch.ones_like(toks)
    mask[0, :3] = 0
    fused_m = model(toks, attention_mask=mask)
    explicit_m = model.run_with_hooks(
        toks,
        attention_mask=mask,
        fwd_hooks=[(lambda n: n.endswith("hook_pattern"), lambda a, hook: None)],
    )
    assert maxdiff(fused_m[mask.bool()], explicit_m[mask.bool()]) <= 1e-5


# --- invariants of the hook contract ------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(BUILDERS))
def test_hook_contract_invariants(kind: str) -> None:
    model = BUILDERS[kind]()
    model.set_use_attn_result(True)
    cfg = model.cfg
    toks = tokens(batch=2, pos=8)
    logits, cache = model.run_with_cache(toks)
    tol = 1e-5
    for i in range(cfg.n_layers):
        pre, mid, post = (cache[f"blocks.{i}.hook_resid_{s}"] for s in ("pre", "mid", "post"))
        attn_out, mlp_out = cache[f"blocks.{i}.hook_attn_out"], cache[f"blocks.{i}.hook_mlp_out"]
        assert maxdiff(mid, pre + attn_out) <= tol
        assert maxdiff(post, mid + mlp_out) <= tol
        result = cache[f"blocks.{i}.attn.hook_result"]
        assert maxdiff(attn_out, result.sum(2) + model.b_O[i].detach()) <= tol

        scores, pattern = (
            cache[f"blocks.{i}.attn.hook_attn_scores"],
            cache[f"blocks.{i}.attn.hook_pattern"],
        )
        assert pattern.shape == (2, cfg.n_heads, 8, 8)
        assert maxdiff(pattern, scores.softmax(-1)) <= 1e-6
        assert maxdiff(pattern.sum(-1), torch.ones(2, cfg.n_heads, 8)) <= 1e-6
        upper = torch.ones(8, 8, dtype=torch.bool).triu(1)
        assert torch.count_nonzero(pattern[..., upper]) == 0

        # The pattern and z by hand from the cached queries, keys and values.
        rot = "rot_" if cfg.positional_embedding_type == "rotary" else ""
        q = cache[f"blocks.{i}.attn.hook_{rot}q"]
        k = cache[f"blocks.{i}.attn.hook_{rot}k"]
        v = cache[f"blocks.{i}.attn.hook_v"]
        group = cfg.n_heads // cfg.n_kv_heads
        k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)
        hand_scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(cfg.d_head)
        hand_scores = hand_scores.masked_fill(upper, float("-inf"))
        hand_pattern = hand_scores.softmax(-1)
        assert maxdiff(pattern, hand_pattern) <= 1e-5
        hand_z = torch.einsum("bhqk,bkhd->bqhd", hand_pattern, v)
        assert maxdiff(cache[f"blocks.{i}.attn.hook_z"], hand_z) <= 1e-5

        # Norm hooks by hand.
        x = pre
        norm = model.blocks[i].ln1
        if cfg.normalization_type == "LN":
            centred = x - x.mean(-1, keepdim=True)
            scale = (centred.pow(2).mean(-1, keepdim=True) + cfg.eps).sqrt()
            normalized = centred / scale * norm.w.detach() + norm.b.detach()
        else:
            scale = (x.pow(2).mean(-1, keepdim=True) + cfg.eps).sqrt()
            normalized = x / scale
        assert maxdiff(cache[f"blocks.{i}.ln1.hook_scale"], scale) <= 1e-6
        assert maxdiff(cache[f"blocks.{i}.ln1.hook_normalized"], normalized) <= 1e-5
    # ln_final -> unembed: LayerNorm's hook_normalized is after its weight and bias, RMSNorm's
    # before its weight (the classic semantics).
    unembed_in = cache["ln_final.hook_normalized"]
    if cfg.normalization_type == "RMS":
        unembed_in = unembed_in * model.ln_final.w.detach()
    assert maxdiff(cache["unembed.hook_in"], unembed_in) <= 1e-6
    by_hand = cache["unembed.hook_in"] @ model.W_U.detach() + model.b_U.detach()
    assert maxdiff(logits, by_hand) <= 1e-5
    assert torch.equal(cache["unembed.hook_out"], logits)


# --- start_at_layer / stop_at_layer ---------------------------------------------------------------


def test_stop_at_layer_returns_residual_and_later_hooks_do_not_fire(
    any_model: anatomist.HookedTransformer,
) -> None:
    toks = tokens()
    # Residual hooks only: the same (fused) kernels as the plain runs below, so exact equality.
    _, full = any_model.run_with_cache(toks, names_filter=lambda n: "hook_resid" in n)
    for k in range(any_model.cfg.n_layers + 1):
        calls = count_fires(any_model, toks, stop_at_layer=k)
        resid = any_model(toks, stop_at_layer=k)
        assert resid.shape == (2, 7, 32)
        if k < any_model.cfg.n_layers:
            assert torch.equal(resid, full[f"blocks.{k}.hook_resid_pre"])
        else:
            assert torch.equal(resid, full[f"blocks.{k - 1}.hook_resid_post"])
        fired_layers = {int(n.split(".")[1]) for n in calls if n.startswith("blocks.")}
        assert fired_layers == set(range(k))
        assert not any(n.startswith(("ln_final", "unembed")) for n in calls)
        out, cache = any_model.run_with_cache(toks, stop_at_layer=k)
        assert maxdiff(out, resid) <= 1e-5  # caching the pattern takes the explicit path
        assert not any(n.startswith((f"blocks.{k}.", "ln_final", "unembed")) for n in cache)


def test_start_at_layer_reproduces_logits(any_model: anatomist.HookedTransformer) -> None:
    toks = tokens()
    logits, cache = any_model.run_with_cache(toks, names_filter=lambda n: n.endswith("resid_pre"))
    for k in range(any_model.cfg.n_layers):
        calls = Counter[str]()

        def count(a: Tensor, hook: HookPoint, calls: Counter[str] = calls) -> None:
            calls.update([hook.name])

        with any_model.hooks(fwd_hooks=[(lambda n: True, count)]):
            out = any_model(cache[f"blocks.{k}.hook_resid_pre"], start_at_layer=k)
        assert maxdiff(out, logits) <= 1e-5
        assert not any(n.startswith("hook_") for n in calls)
        assert {int(n.split(".")[1]) for n in calls if n.startswith("blocks.")} == set(
            range(k, any_model.cfg.n_layers)
        )
    mid = any_model(toks, stop_at_layer=1)
    assert maxdiff(any_model(mid, start_at_layer=1), logits) <= 1e-5


# --- the hook API on any nn.Module tree ---------------------------------------------------------


class TwoLayer(HookedRootModule):
    def __init__(self) -> None:
        super().__init__()
        self.lin1 = nn.Linear(3, 4)
        self.hook_mid = HookPoint()
        self.inner = nn.Module()
        self.inner.lin2 = nn.Linear(4, 2)
        self.inner.hook_out = HookPoint()
        self.setup()

    def forward(self, x: Tensor) -> Tensor:
        mid = self.hook_mid(F.relu(self.lin1(x)))
        return self.inner.hook_out(self.inner.lin2(mid))


def test_hooked_root_module_on_plain_module_tree() -> None:
    torch.manual_seed(0)
    net = TwoLayer()
    assert list(net.hook_dict) == ["hook_mid", "inner.hook_out"]
    assert net.hook_points() == [net.hook_mid, net.inner.hook_out]
    assert net.mod_dict["inner.lin2"] is net.inner.lin2
    x = torch.randn(5, 3)
    out, cache = net.run_with_cache(x)
    assert set(cache.keys()) == {"hook_mid", "inner.hook_out"}
    assert torch.allclose(cache["hook_mid"], F.relu(x @ net.lin1.weight.T + net.lin1.bias))
    assert torch.equal(cache["inner.hook_out"], out)
    patched = net.run_with_hooks(x, fwd_hooks=[("hook_mid", lambda a, hook: torch.zeros_like(a))])
    assert torch.allclose(patched, net.inner.lin2.bias.expand(5, 2))
    assert no_hooks_left(net)
    # No cfg: hooks are never opt-in here, and everything still works with a predicate.
    calls: list[str] = []
    net.add_hook(lambda n: "out" in n, lambda a, hook: calls.append(hook.name))
    net(x)
    assert calls == ["inner.hook_out"]


VARIANTS = {
    "parallel": dict(parallel_attn_mlp=True),
    "LNPre": dict(normalization_type="LNPre"),
    "no_norm": dict(normalization_type=None),
    "no_positions": dict(positional_embedding_type="none"),
    "rotary_mha": dict(positional_embedding_type="rotary", normalization_type="RMS"),
}


@pytest.mark.parametrize(
    "variant",
    [
        *VARIANTS,
        "attn_only",
    ],
)
def test_each_hook_fires_once_on_architecture_variants(variant: str) -> None:
    options: dict[str, Any] = VARIANTS.get(variant, dict(attn_only=True))
    cfg = anatomist.TransformerConfig(
        n_layers=2, d_model=32, n_ctx=32, d_head=8, d_vocab=50, seed=0, **options
    )
    model = anatomist.HookedTransformer(cfg)
    randomize_small_params(model)
    model.set_use_attn_result(True)
    toks = tokens()
    calls = count_fires(model, toks)
    for name, hp in model.hook_dict.items():
        assert calls[name] == (1 if model._opt_in_enabled(hp) else 0), name
    _, cache = model.run_with_cache(toks)
    for i in range(cfg.n_layers):
        pre, post = cache[f"blocks.{i}.hook_resid_pre"], cache[f"blocks.{i}.hook_resid_post"]
        attn_out = cache[f"blocks.{i}.hook_attn_out"]
        mlp_out = 0 if cfg.attn_only else cache[f"blocks.{i}.hook_mlp_out"]
        assert (post - (pre + attn_out + mlp_out)).abs().max() <= 1e-5
        result = cache[f"blocks.{i}.attn.hook_result"]
        assert (attn_out - result.sum(2) - model.b_O[i].detach()).abs().max() <= 1e-5
