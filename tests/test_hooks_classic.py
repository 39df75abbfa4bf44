"""The classic hook API beyond the basics (tests/test_hooks.py): LensHandle fields, prepend,
has_hooks as a truthy callable, permanent hooks, check_hooks_to_add, add_caching_hooks /
cache_all / cache_some, list_hooks, setup() after swapping a hook point for another module."""

from __future__ import annotations

import logging
import threading

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from anatomist import HookedRootModule, HookPoint
from anatomist.hooks import HookIntrospectionMixin, LensHandle, is_hooked
from tests.helpers import gpt2_like


def identity(x: Tensor, hook: HookPoint) -> None:
    return None


def other(x: Tensor, hook: HookPoint) -> None:
    return None


class Net(HookedRootModule):
    """lin1 -> relu -> hook_mid -> lin2 -> inner.hook_out."""

    def __init__(self) -> None:
        super().__init__()
        self.lin1 = nn.Linear(3, 4)
        self.hook_mid = HookPoint()
        self.inner = nn.Module()
        self.inner.lin2 = nn.Linear(4, 2)
        self.inner.hook_out = HookPoint()
        self.setup()

    def forward(self, x: Tensor) -> Tensor:
        return self.inner.hook_out(self.inner.lin2(self.hook_mid(F.relu(self.lin1(x)))))


def by_hand(net: Net, x: Tensor) -> tuple[Tensor, Tensor]:
    mid = F.relu(x @ net.lin1.weight.T + net.lin1.bias)
    return mid, mid @ net.inner.lin2.weight.T + net.inner.lin2.bias


# --- HookPoint ------------------------------------------------------------------------------------


def test_lens_handle_has_the_classic_fields() -> None:
    point = HookPoint()
    entry = point.add_hook(identity, is_permanent=True, level=3)
    assert isinstance(entry, LensHandle)
    assert point.fwd_hooks == [entry]
    assert entry.user_hook is identity and entry.is_permanent and entry.context_level == 3
    assert entry.hook.id in point._forward_hooks  # torch's own handle
    # The classic positional order: hook, is_permanent, context_level, user_hook.
    assert [f for f in LensHandle.__dataclass_fields__][:4] == [
        "hook",
        "is_permanent",
        "context_level",
        "user_hook",
    ]


def test_prepend_puts_the_hook_first_in_the_list_and_in_the_run() -> None:
    point = HookPoint()
    calls: list[str] = []
    point.add_hook(lambda x, hook: calls.append("a"))
    point.add_hook(lambda x, hook: calls.append("b"), prepend=True)
    point(torch.ones(1))
    assert calls == ["b", "a"]
    assert [e.user_hook(None, None) for e in point.fwd_hooks] and calls == ["b", "a", "b", "a"]


def test_has_hooks_is_truthy_and_callable_with_the_classic_filters() -> None:
    point = HookPoint()
    assert not point.has_hooks and not point.has_hooks()
    point.add_hook(identity, dir="fwd", is_permanent=True, level=0)
    point.add_hook(other, dir="bwd", level=2)
    assert point.has_hooks and point.has_hooks == True  # noqa: E712
    assert point.has_hooks() and point.has_hooks("fwd") and point.has_hooks(dir="bwd")
    assert not point.has_hooks(dir="fwd", including_permanent=False)
    assert point.has_hooks(dir="bwd", including_permanent=False)
    assert point.has_hooks(level=0) and point.has_hooks(level=2) and not point.has_hooks(level=1)
    assert not point.has_hooks(dir="bwd", level=0)
    with pytest.raises(ValueError, match="Direction"):
        point.has_hooks(dir="sideways")  # type: ignore[arg-type]
    point.remove_hooks("both", including_permanent=True)
    assert not point.has_hooks and not point.has_hooks()


def test_has_hooks_ignores_another_threads_hooks() -> None:
    point = HookPoint()
    thread = threading.Thread(target=lambda: point.add_hook(identity, thread=threading.get_ident()))
    thread.start()
    thread.join()
    assert len(point.fwd_hooks) == 1
    assert not point.has_hooks and not point.has_hooks()


def test_add_perma_hook_survives_remove_hooks() -> None:
    point = HookPoint()
    point.add_perma_hook(identity)
    point.add_hook(other)
    point.remove_hooks("both")
    assert [e.user_hook for e in point.fwd_hooks] == [identity]
    point.remove_hooks("both", including_permanent=True)
    assert point.fwd_hooks == [] and not point._forward_hooks


def test_repr_names_the_point_and_counts_its_hooks() -> None:
    point = HookPoint()
    assert repr(point) == "HookPoint()"
    point.name = "blocks.0.hook_resid_post"
    point.add_hook(identity)
    point.add_hook(other)
    point.add_hook(other, dir="bwd")
    assert repr(point) == "HookPoint(name='blocks.0.hook_resid_post', 2 fwd, 1 bwd)"


def test_layer_reads_the_index_after_the_first_part() -> None:
    point = HookPoint()
    point.name = "decoder.3.hook_resid_pre"
    assert point.layer() == 3
    point.name = "blocks.12.hook_mlp_out.hook_sae_acts_post"
    assert point.layer() == 12


# --- HookedRootModule ----------------------------------------------------------------------------


def test_root_module_accepts_classic_init_args_and_is_caching_flag() -> None:
    class WithArgs(HookedRootModule):
        def __init__(self) -> None:
            super().__init__("ignored", 1)
            self.hook_x = HookPoint()
            self.setup()

    model = WithArgs()
    assert model.is_caching is False
    model.get_caching_hooks()
    assert model.is_caching is True
    model.reset_hooks()
    assert model.is_caching is False


def test_check_hooks_to_add_runs_before_every_hook_is_attached() -> None:
    seen: list[tuple[str, str]] = []

    class Refusing(Net):
        def check_hooks_to_add(  # type: ignore[override]
            self, hook_point, hook_point_name, hook, dir="fwd", is_permanent=False, prepend=False
        ) -> None:
            seen.append((hook_point_name, dir))
            assert hook_point is self.hook_dict[hook_point_name]
            if hook_point_name == "inner.hook_out":
                raise PermissionError("no hooks on the output")

    net = Refusing()
    x = torch.randn(2, 3)
    net.add_hook("hook_mid", identity, dir="bwd")
    assert seen == [("hook_mid", "bwd")]
    with pytest.raises(PermissionError):
        net.add_hook(lambda name: True, identity)
    with pytest.raises(PermissionError):
        net.run_with_hooks(x, fwd_hooks=[("hook_mid", identity), ("inner.hook_out", identity)])
    # add_hook attaches point by point (as classic): the predicate's hook_mid hook is there; the
    # run_with_hooks block was refused before it attached anything.
    assert [e.user_hook for e in net.hook_mid.bwd_hooks + net.hook_mid.fwd_hooks] == [identity] * 2
    assert not net.inner.hook_out.fwd_hooks
    _, cache = net.run_with_cache(x, names_filter="hook_mid")
    assert set(cache) == {"hook_mid"}


def test_check_and_add_hook_override_sees_every_add_hook() -> None:
    class Counting(Net):
        def __init__(self) -> None:
            super().__init__()
            self.added: list[str] = []

        def check_and_add_hook(self, hook_point, hook_point_name, hook, **kwargs):  # type: ignore[override]
            self.added.append(hook_point_name)
            super().check_and_add_hook(hook_point, hook_point_name, hook, **kwargs)

    net = Counting()
    net.add_hook(lambda name: True, identity, is_permanent=True)
    assert net.added == ["hook_mid", "inner.hook_out"]
    assert all(hp.fwd_hooks[0].is_permanent for hp in net.hook_points())


def test_add_caching_hooks_fills_the_dict_on_every_forward_until_reset() -> None:
    torch.manual_seed(0)
    net = Net()
    x1, x2 = torch.randn(2, 3), torch.randn(2, 3)
    cache = net.add_caching_hooks(names_filter=["hook_mid"], incl_bwd=True)
    net(x1).sum().backward()
    mid, _ = by_hand(net, x1)
    assert set(cache) == {"hook_mid", "hook_mid_grad"}
    torch.testing.assert_close(cache["hook_mid"], mid)
    # d(sum(out))/d(mid) = the column sums of lin2's weight, for every row.
    torch.testing.assert_close(cache["hook_mid_grad"], net.inner.lin2.weight.sum(0).expand(2, 4))
    net(x2)
    torch.testing.assert_close(cache["hook_mid"], by_hand(net, x2)[0])
    assert not cache["hook_mid"].requires_grad
    net.reset_hooks()
    net(x1)
    torch.testing.assert_close(cache["hook_mid"], by_hand(net, x2)[0])


def test_add_caching_hooks_into_a_given_dict_without_batch_dim() -> None:
    net = Net()
    x = torch.randn(1, 3)
    store: dict[str, Tensor] = {"keep": torch.zeros(1)}
    assert net.add_caching_hooks(remove_batch_dim=True, cache=store) is store
    out = net(x)
    assert set(store) == {"keep", "hook_mid", "inner.hook_out"}
    torch.testing.assert_close(store["inner.hook_out"], out[0])


def test_cache_all_and_cache_some_warn_and_cache(caplog: pytest.LogCaptureFixture) -> None:
    net = Net()
    x = torch.randn(2, 3)
    everything: dict[str, Tensor] = {}
    some: dict[str, Tensor] = {}
    with caplog.at_level(logging.WARNING):
        net.cache_all(everything)
        net.cache_some(some, lambda name: name.startswith("inner"))
    assert "deprecated" in caplog.text
    out = net(x)
    assert set(everything) == {"hook_mid", "inner.hook_out"} and set(some) == {"inner.hook_out"}
    torch.testing.assert_close(some["inner.hook_out"], by_hand(net, x)[1])
    assert torch.equal(everything["inner.hook_out"], out.detach())


def test_remove_all_hook_fns_by_level_keeps_contexts() -> None:
    net = Net()
    net.add_hook("hook_mid", identity, level=1)
    net.add_hook("hook_mid", other, level=2)
    net.hook_mid.ctx["note"] = 1
    net.remove_all_hook_fns(level=1)
    assert [e.user_hook for e in net.hook_mid.fwd_hooks] == [other]
    assert net.hook_mid.ctx == {"note": 1}
    net.reset_hooks()
    assert net.hook_mid.fwd_hooks == [] and net.hook_mid.ctx == {}


def test_list_hooks_by_name_direction_and_permanence() -> None:
    net = Net()
    assert net.list_hooks() == {}
    net.add_hook("hook_mid", identity, is_permanent=True)
    net.add_hook("hook_mid", other, dir="bwd")
    net.add_hook("inner.hook_out", other)
    found = net.list_hooks()
    assert list(found) == ["hook_mid", "inner.hook_out"]
    assert [e.user_hook for e in found["hook_mid"]] == [identity, other]
    assert list(net.list_hooks("inner.hook_out")) == ["inner.hook_out"]
    assert list(net.list_hooks(["hook_mid"], dir="bwd")) == ["hook_mid"]
    assert list(net.list_hooks(lambda n: "out" in n, dir="bwd")) == []
    assert [e.user_hook for e in net.list_hooks(including_permanent=False)["hook_mid"]] == [other]


def test_hook_introspection_mixin_reads_any_hook_dict() -> None:
    class Bag(HookIntrospectionMixin):
        @property
        def hook_dict(self) -> dict[str, HookPoint]:
            return {"only": point}

    point = HookPoint()
    point.add_hook(identity)
    assert [e.user_hook for e in Bag().list_hooks()["only"]] == [identity]


# --- a hook point swapped for another module, then setup() again (SAELens' pattern) ---------------


class Doubler(HookedRootModule):
    """What SAELens puts in a hook point's place: a module holding hook points of its own."""

    def __init__(self) -> None:
        super().__init__()
        self.hook_sae_acts = HookPoint()
        self.setup()

    def forward(self, x: Tensor) -> Tensor:
        return 2 * self.hook_sae_acts(x)


def test_setup_rebuilds_the_dicts_after_a_swap_and_caches_the_new_points() -> None:
    net = Net()
    x = torch.randn(2, 3)
    net.hook_mid = Doubler()  # type: ignore[assignment]
    net.setup()
    assert list(net.hook_dict) == ["hook_mid.hook_sae_acts", "inner.hook_out"]
    assert net.mod_dict["hook_mid"] is net.hook_mid and net.hook_mid.name == "hook_mid"
    assert net.hook_dict["hook_mid.hook_sae_acts"].name == "hook_mid.hook_sae_acts"
    out, cache = net.run_with_cache(x)
    mid, _ = by_hand(net, x)
    torch.testing.assert_close(cache["hook_mid.hook_sae_acts"], mid)
    torch.testing.assert_close(out, 2 * mid @ net.inner.lin2.weight.T + net.inner.lin2.bias)
    zeroed = net.run_with_hooks(
        x, fwd_hooks=[("hook_mid.hook_sae_acts", lambda a, hook: torch.zeros_like(a))]
    )
    torch.testing.assert_close(zeroed, net.inner.lin2.bias.expand(2, 2))
    net.hook_mid = HookPoint()  # type: ignore[assignment]
    net.setup()
    assert list(net.hook_dict) == ["hook_mid", "inner.hook_out"]


def test_is_hooked_treats_a_swapped_in_module_as_hooked() -> None:
    point = HookPoint()
    assert not is_hooked(point)
    point.add_hook(identity)
    assert is_hooked(point)
    assert is_hooked(nn.Identity())


@pytest.mark.parametrize(
    "hook_name", ["blocks.0.attn.hook_pattern", "blocks.1.ln1.hook_normalized"]
)
def test_a_module_in_place_of_a_skippable_hook_point_runs(hook_name: str) -> None:
    """The fused attention and norm paths skip hook points nobody hooks; a module swapped in
    for one must still see (and may replace) its activation."""
    model = gpt2_like()
    toks = torch.randint(0, 50, (2, 6), generator=torch.Generator().manual_seed(0))
    expected = model.run_with_hooks(toks, fwd_hooks=[(hook_name, lambda a, hook: 2 * a)])
    parent_name, _, attr = hook_name.rpartition(".")
    parent = model.mod_dict[parent_name]
    setattr(parent, attr, Doubler())
    model.setup()
    try:
        _, cache = model.run_with_cache(toks, names_filter=f"{hook_name}.hook_sae_acts")
        out = model(toks)
    finally:
        setattr(parent, attr, HookPoint())
        model.setup()
    assert f"{hook_name}.hook_sae_acts" in cache
    torch.testing.assert_close(out, expected)
