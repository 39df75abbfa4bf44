"""One model, several threads (a server answering several users): hooks added through
`hooks()`, `run_with_hooks` and `run_with_cache` fire only in the adding thread's forward passes
(and the backward passes of what they computed); `add_hook` hooks fire in every thread; context
levels are per thread. The forwards really overlap: each thread waits on a barrier inside its
own forward pass until the other is inside its own."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

import anatomist
from tests.bad_input.state import tiny_model

TIMEOUT = 10  # seconds; a barrier that times out fails the test instead of hanging it
IDS = {"a": torch.tensor([[1, 2, 3, 4, 5]]), "b": torch.tensor([[6, 7, 8, 9, 10], [3, 1, 4, 1, 5]])}


def run_threads(work: dict[str, Callable[[], Any]]) -> dict[str, Any]:
    """Run each work item in its own thread; return their results (re-raising any error)."""
    results: dict[str, Any] = {}
    errors: list[BaseException] = []

    def target(key: str) -> None:
        try:
            results[key] = work[key]()
        except BaseException as error:  # re-raised in the main thread
            errors.append(error)

    threads = [threading.Thread(target=target, args=(key,)) for key in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT * 3)
    if errors:
        raise errors[0]
    assert all(not thread.is_alive() for thread in threads), "a thread is stuck"
    return results


def meeting_point(barrier: threading.Barrier) -> Callable[[torch.Tensor, Any], None]:
    """A hook that waits, once per thread, until every thread is inside its forward pass."""
    met: set[int] = set()

    def meet(activation: torch.Tensor, hook: Any) -> None:
        if threading.get_ident() not in met:
            met.add(threading.get_ident())
            barrier.wait(TIMEOUT)

    return meet


def steering(label: str, shift: float, fired: dict[str, list[int]]) -> Callable[..., torch.Tensor]:
    """A hook that edits the stream and records the thread it fired in."""

    def steer(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        fired.setdefault(label, []).append(threading.get_ident())
        return activation + shift

    return steer


def test_run_with_hooks_in_two_threads_fires_each_threads_hooks_only() -> None:
    model = tiny_model()
    hooks = {
        "a": [("blocks.0.hook_resid_post", lambda x, hook: x + 1.0)],
        "b": [("blocks.1.hook_mlp_out", lambda x, hook: x * -2.0)],
    }
    alone = {key: model.run_with_hooks(IDS[key], fwd_hooks=hooks[key]) for key in IDS}

    barrier = threading.Barrier(2)
    fired: dict[str, list[int]] = {}
    idents: dict[str, int] = {}

    def work(key: str) -> Callable[[], torch.Tensor]:
        def run() -> torch.Tensor:
            idents[key] = threading.get_ident()
            fwd = [
                ("blocks.0.hook_resid_pre", meeting_point(barrier)),
                ("blocks.0.hook_resid_pre", steering(key, 0.0, fired)),
                *hooks[key],
            ]
            return model.run_with_hooks(IDS[key], fwd_hooks=fwd)  # type: ignore[no-any-return]

        return run

    results = run_threads({key: work(key) for key in IDS})
    for key in IDS:
        assert torch.equal(results[key], alone[key])
        assert fired[key] == [idents[key]]  # once, in its own thread
    assert not any(hp.fwd_hooks for hp in model.hook_dict.values())


def test_run_with_cache_in_two_threads_caches_each_threads_own_run() -> None:
    model = tiny_model()
    alone = {key: model.run_with_cache(IDS[key]) for key in IDS}
    barrier = threading.Barrier(2)

    def work(key: str) -> Callable[[], Any]:
        def run() -> Any:
            with model.hooks(fwd_hooks=[("hook_embed", meeting_point(barrier))]):
                return model.run_with_cache(IDS[key])

        return run

    results = run_threads({key: work(key) for key in IDS})
    for key in IDS:
        logits, cache = results[key]
        assert torch.equal(logits, alone[key][0])
        assert set(cache.keys()) == set(alone[key][1].keys())
        for name, value in cache.items():
            assert torch.equal(value, alone[key][1][name]), name


def test_another_threads_pattern_hook_does_not_change_this_threads_path() -> None:
    # A hook on hook_pattern makes attention compute the pattern explicitly; in another
    # thread's forward the fused kernel must still run (bit-identical to running alone).
    model = tiny_model()
    plain = model(IDS["b"])
    barrier = threading.Barrier(2)
    patterns: list[torch.Tensor] = []

    def a() -> None:
        with model.hooks(
            fwd_hooks=[
                ("blocks.0.attn.hook_pattern", lambda x, hook: patterns.append(x)),
                ("hook_embed", meeting_point(barrier)),
            ]
        ):
            model(IDS["a"])

    def b() -> torch.Tensor:
        with model.hooks(fwd_hooks=[("hook_embed", meeting_point(barrier))]):
            return model(IDS["b"])  # type: ignore[no-any-return]

    results = run_threads({"a": a, "b": b})
    assert torch.equal(results["b"], plain)
    assert [p.shape[0] for p in patterns] == [1]  # thread a's batch only


def test_context_levels_are_per_thread() -> None:
    # a enters a block, b enters one; a leaves and enters a second block. With one level
    # counter a's second block got b's level number and took b's hook with it when it left.
    model = tiny_model()
    steps = [threading.Event() for _ in range(3)]
    fired: dict[str, list[int]] = {}
    ids = IDS["a"]

    def a() -> int:
        with model.hooks(fwd_hooks=[("hook_embed", steering("a1", 0.0, fired))]):
            steps[0].set()
            assert steps[1].wait(TIMEOUT)
        with model.hooks(fwd_hooks=[("hook_embed", steering("a2", 0.0, fired))]):
            model(ids)
        steps[2].set()
        return model.context_level

    def b() -> int:
        assert steps[0].wait(TIMEOUT)
        with model.hooks(fwd_hooks=[("blocks.0.hook_resid_post", steering("b", 0.0, fired))]):
            steps[1].set()
            assert steps[2].wait(TIMEOUT)
            model(ids)  # b's hook is still there
            level = model.context_level
        return level

    results = run_threads({"a": a, "b": b})
    assert results == {"a": 0, "b": 1}
    assert len(fired["b"]) == 1 and len(fired["a2"]) == 1 and "a1" not in fired
    assert model.context_level == 0
    assert not any(hp.fwd_hooks for hp in model.hook_dict.values())


def test_add_hook_fires_in_every_thread() -> None:
    model = tiny_model()
    fired: dict[str, list[int]] = {}
    model.add_hook("hook_embed", steering("everywhere", 0.0, fired))
    barrier = threading.Barrier(2)

    def work(key: str) -> Callable[[], Any]:
        def run() -> Any:
            with model.hooks(fwd_hooks=[("hook_embed", meeting_point(barrier))]):
                return model(IDS[key])

        return run

    run_threads({key: work(key) for key in IDS})
    assert len(fired["everywhere"]) == 2
    assert len(set(fired["everywhere"])) == 2  # once in each thread
    model.reset_hooks()


def test_backward_hooks_fire_for_their_threads_forward_only() -> None:
    model = tiny_model()
    grads: dict[str, list[torch.Tensor]] = {"a": [], "b": []}
    barrier = threading.Barrier(2)

    def work(key: str) -> Callable[[], None]:
        def run() -> None:
            loss = model.run_with_hooks(
                IDS[key],
                return_type="loss",
                fwd_hooks=[("hook_embed", meeting_point(barrier))],
                bwd_hooks=[("blocks.0.hook_resid_post", lambda g, hook: grads[key].append(g))],
            )
            loss.backward()

        return run

    run_threads({key: work(key) for key in IDS})
    assert [g.shape[0] for g in grads["a"]] == [1]
    assert [g.shape[0] for g in grads["b"]] == [2]
    model.zero_grad(set_to_none=True)


def test_the_no_hook_fast_path_is_untouched() -> None:
    model = tiny_model()
    assert isinstance(model.hook_dict["hook_embed"], anatomist.HookPoint)
    assert not model.hook_dict["hook_embed"].has_hooks
    x = torch.ones(2)
    assert model.hook_dict["hook_embed"](x) is x
