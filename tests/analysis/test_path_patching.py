"""Path patching against a hand-written two-pass reference and a direct-effect formula."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from anatomist.analysis.path_patching import path_patch, path_patch_heads
from tests.analysis.metrics import logit_diff
from tests.helpers import BUILDERS


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def setup(request: Any) -> tuple[Any, torch.Tensor, Any, Any]:
    model = BUILDERS[request.param]()
    gen = torch.Generator().manual_seed(4)
    clean = torch.randint(0, model.cfg.d_vocab, (2, 5), generator=gen)
    corrupted = torch.randint(0, model.cfg.d_vocab, (2, 5), generator=gen)
    _, clean_cache = model.run_with_cache(clean)
    _, corrupted_cache = model.run_with_cache(corrupted)
    return model, corrupted, clean_cache, corrupted_cache


def reference(
    model: Any,
    corrupted: torch.Tensor,
    clean_cache: Any,
    corrupted_cache: Any,
    senders: list[tuple[int, int]],
    receivers: list[tuple[str, int | None]],
    freeze_mlps: bool = False,
) -> float:
    """Pass 1: every head output frozen to the corrupted run, senders clean, receivers recorded.
    Pass 2: the corrupted run with only the receivers replaced."""

    def freeze_z(act: torch.Tensor, hook: Any) -> torch.Tensor:
        new = corrupted_cache[hook.name].clone()
        for layer, head in senders:
            if layer == hook.layer():
                new[:, :, head] = clean_cache[hook.name][:, :, head]
        return new

    def freeze(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return corrupted_cache[hook.name].clone()

    recorded: dict[str, torch.Tensor] = {}

    def record(act: torch.Tensor, hook: Any) -> None:
        recorded[hook.name] = act.clone()

    hooks: list[tuple[Any, Any]] = [(lambda n: n.endswith("attn.hook_z"), freeze_z)]
    if freeze_mlps:
        hooks.append((lambda n: n.endswith("hook_mlp_out"), freeze))
    hooks += [(name, record) for name in {name for name, _ in receivers}]
    with torch.no_grad():
        model.run_with_hooks(corrupted, fwd_hooks=hooks)

    def put(act: torch.Tensor, hook: Any) -> torch.Tensor:
        act = act.clone()
        for name, head in receivers:
            if name != hook.name:
                continue
            if head is None:
                act = recorded[name].clone()
            elif act.shape[1] == model.cfg.n_heads and "pattern" in name:
                act[:, head] = recorded[name][:, head]
            else:
                act[:, :, head] = recorded[name][:, :, head]
        return act

    with torch.no_grad():
        logits = model.run_with_hooks(
            corrupted, fwd_hooks=[(name, put) for name in {name for name, _ in receivers}]
        )
    return float(logit_diff(logits))


CASES = [
    # senders, receivers (name, head), freeze_mlps
    ([(0, 1)], [("blocks.1.attn.hook_q", 2)], False),
    ([(0, 0), (0, 3)], [("blocks.1.attn.hook_k", 1), ("blocks.1.attn.hook_v", 0)], False),
    ([(0, 2)], [("blocks.1.hook_resid_pre", None)], True),
    ([(0, 2), (1, 1)], [("blocks.1.hook_resid_post", None)], False),
    ([(0, 3)], [("blocks.1.attn.hook_pattern", 2), ("blocks.1.mlp.hook_pre", None)], False),
]


@pytest.mark.parametrize(("senders", "receivers", "freeze_mlps"), CASES)
def test_path_patch_equals_two_pass_reference(
    setup: Any, senders: Any, receivers: Any, freeze_mlps: bool
) -> None:
    model, corrupted, clean_cache, corrupted_cache = setup
    spec = [name if head is None else (name, head) for name, head in receivers]
    got = path_patch(
        model, corrupted, clean_cache, logit_diff, senders, spec, freeze_mlps=freeze_mlps
    )
    expected = reference(
        model, corrupted, clean_cache, corrupted_cache, senders, receivers, freeze_mlps
    )
    assert got == pytest.approx(expected, abs=1e-5)
    with torch.no_grad():
        corrupted_metric = float(logit_diff(model(corrupted)))
    assert abs(got - corrupted_metric) > 1e-4  # the path carries something


def test_direct_path_to_logits_is_the_heads_output_difference(setup: Any) -> None:
    """With MLPs frozen, the final residual moves by exactly the senders' change in output."""
    model, corrupted, clean_cache, corrupted_cache = setup
    senders = [(0, 1), (1, 3)]
    last = model.cfg.n_layers - 1
    resid = corrupted_cache[f"blocks.{last}.hook_resid_post"].clone()
    for layer, head in senders:
        z = f"blocks.{layer}.attn.hook_z"
        dz = clean_cache[z][:, :, head] - corrupted_cache[z][:, :, head]  # [b, p, d_head]
        resid += dz @ model.blocks[layer].attn.W_O[head]

    def final(act: torch.Tensor, hook: Any) -> torch.Tensor:
        return resid

    with torch.no_grad():
        logits = model.run_with_hooks(
            corrupted, fwd_hooks=[(f"blocks.{last}.hook_resid_post", final)]
        )
    got = path_patch(model, corrupted, clean_cache, logit_diff, senders, freeze_mlps=True)
    assert got == pytest.approx(float(logit_diff(logits)), abs=1e-5)


def test_sweep_over_heads_batched_and_one_by_one(setup: Any) -> None:
    model, corrupted, clean_cache, corrupted_cache = setup
    receivers = ["blocks.1.attn.hook_v", ("q1", 0)]
    one = path_patch_heads(
        model, corrupted, clean_cache, logit_diff, receivers, progress=False,
        corrupted_cache=corrupted_cache,
    )  # fmt: skip
    batched = path_patch_heads(
        model, corrupted, clean_cache, logit_diff, receivers, batch_size=3, progress=False
    )
    assert one.shape == (model.cfg.n_layers, model.cfg.n_heads)
    torch.testing.assert_close(batched, one, atol=1e-5, rtol=1e-5)
    for layer, head in [(0, 0), (0, 3)]:
        single = path_patch(model, corrupted, clean_cache, logit_diff, (layer, head), receivers)
        assert one[layer, head].item() == pytest.approx(single, abs=1e-5)
    # Layer-1 heads write after layer 1's queries and values are read: no path, no effect.
    with torch.no_grad():
        corrupted_metric = float(logit_diff(model(corrupted)))
    torch.testing.assert_close(one[1], torch.full_like(one[1], corrupted_metric))
    assert (one[0] - corrupted_metric).abs().max() > 1e-4


def test_frozen_receiver_is_refused(setup: Any) -> None:
    model, corrupted, clean_cache, _ = setup
    with pytest.raises(ValueError, match="frozen"):
        path_patch(model, corrupted, clean_cache, logit_diff, (0, 0), "blocks.1.attn.hook_z")
    with pytest.raises(ValueError, match="frozen"):
        path_patch(model, corrupted, clean_cache, logit_diff, (0, 0), "mlp_out1", freeze_mlps=True)
