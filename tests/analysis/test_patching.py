"""Activation patching: every preset against a hand-written hook loop, clean-into-clean, batching."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
import torch

import anatomist
from anatomist.analysis import patching
from anatomist.utils import get_act_name
from tests.analysis.metrics import logit_diff
from tests.helpers import BUILDERS

N_POS = 4


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def setup(request: Any) -> tuple[Any, torch.Tensor, torch.Tensor, Any]:
    model = BUILDERS[request.param]()
    gen = torch.Generator().manual_seed(3)
    clean = torch.randint(0, model.cfg.d_vocab, (2, N_POS), generator=gen)
    corrupted = torch.randint(0, model.cfg.d_vocab, (2, N_POS), generator=gen)
    _, clean_cache = model.run_with_cache(clean)
    return model, clean, corrupted, clean_cache


# preset -> (activation, index -> the slice it patches, written out by hand)
Cell = tuple[int, ...]
REFERENCE: dict[str, tuple[str, str, Callable[[Cell], tuple[Any, ...]]]] = {
    "get_act_patch_resid_pre": ("resid_pre", "lp", lambda c: (slice(None), c[1])),
    "get_act_patch_resid_mid": ("resid_mid", "lp", lambda c: (slice(None), c[1])),
    "get_act_patch_attn_out": ("attn_out", "lp", lambda c: (slice(None), c[1])),
    "get_act_patch_mlp_out": ("mlp_out", "lp", lambda c: (slice(None), c[1])),
    "get_act_patch_attn_head_out_by_pos": ("z", "lph", lambda c: (slice(None), c[1], c[2])),
    "get_act_patch_attn_head_q_by_pos": ("q", "lph", lambda c: (slice(None), c[1], c[2])),
    "get_act_patch_attn_head_k_by_pos": ("k", "lph", lambda c: (slice(None), c[1], c[2])),
    "get_act_patch_attn_head_v_by_pos": ("v", "lph", lambda c: (slice(None), c[1], c[2])),
    "get_act_patch_attn_head_out_all_pos": ("z", "lh", lambda c: (slice(None), slice(None), c[1])),
    "get_act_patch_attn_head_q_all_pos": ("q", "lh", lambda c: (slice(None), slice(None), c[1])),
    "get_act_patch_attn_head_k_all_pos": ("k", "lh", lambda c: (slice(None), slice(None), c[1])),
    "get_act_patch_attn_head_v_all_pos": ("v", "lh", lambda c: (slice(None), slice(None), c[1])),
    "get_act_patch_attn_head_pattern_all_pos": ("pattern", "lH", lambda c: (slice(None), c[1])),
    "get_act_patch_attn_head_pattern_by_pos": (
        "pattern", "lHd", lambda c: (slice(None), c[1], c[2])),
    "get_act_patch_attn_head_pattern_dest_src_pos": (
        "pattern", "lHds", lambda c: (slice(None), c[1], c[2], c[3])),
}  # fmt: skip


def axis_sizes(model: Any, cache: Any, activation: str, axes: str) -> list[int]:
    """Sizes read off the cached activation itself: [b,p,h,d] (q/k/v/z) or [b,h,q,k]."""
    act = cache[get_act_name(activation, layer=0)]
    size = {
        "l": model.cfg.n_layers,
        "p": act.shape[1],
        "h": act.shape[2] if act.dim() == 4 else None,
        "H": act.shape[1],
        "d": act.shape[2],
        "s": act.shape[3] if act.dim() == 4 else None,
    }
    return [size[a] for a in axes]  # type: ignore[misc]


def reference_sweep(model: Any, corrupted: torch.Tensor, cache: Any, preset: str) -> torch.Tensor:
    activation, axes, where = REFERENCE[preset]
    sizes = axis_sizes(model, cache, activation, axes)
    out = torch.zeros(sizes)
    for cell in itertools.product(*(range(n) for n in sizes)):
        name = get_act_name(activation, layer=cell[0])
        index = where(cell)

        def patch(act: torch.Tensor, hook: Any, name: str = name, index: Any = index) -> Any:
            act = act.clone()
            act[index] = cache[name][index]
            return act

        with torch.no_grad():
            logits = model.run_with_hooks(corrupted, fwd_hooks=[(name, patch)])
        out[cell] = logit_diff(logits)
    return out


@pytest.mark.parametrize("preset", sorted(REFERENCE))
def test_preset_equals_hand_written_patch(setup: Any, preset: str) -> None:
    model, _, corrupted, cache = setup
    # All cells in one forward pass; the default one-cell-per-pass loop is checked against this
    # batched path below.
    fn = getattr(patching, preset)
    got = fn(model, corrupted, cache, logit_diff, progress=False, batch_size=256)
    expected = reference_sweep(model, corrupted, cache, preset)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # The sweep moved something: a test that cannot fail would pass on a no-op patch.
    with torch.no_grad():
        corrupted_metric = logit_diff(model(corrupted))
    assert (got - corrupted_metric).abs().max() > 1e-4


def test_clean_into_clean_gives_clean_metric_everywhere(setup: Any) -> None:
    model, clean, _, cache = setup
    with torch.no_grad():
        clean_metric = float(logit_diff(model(clean)))
    kw: dict[str, Any] = dict(progress=False, batch_size=64)
    results = {
        "block": patching.get_act_patch_block_every(model, clean, cache, logit_diff, **kw),
        "heads": patching.get_act_patch_attn_head_all_pos_every(model, clean, cache, logit_diff, **kw),
        "by_pos": patching.get_act_patch_attn_head_by_pos_every(model, clean, cache, logit_diff, **kw),
        "resid_mid": patching.get_act_patch_resid_mid(model, clean, cache, logit_diff, **kw),
        "dest_src": patching.get_act_patch_attn_head_pattern_dest_src_pos(
            model, clean, cache, logit_diff, **kw
        ),
    }  # fmt: skip
    cfg = model.cfg
    assert results["block"].shape == (3, cfg.n_layers, N_POS)
    assert results["heads"].shape == (5, cfg.n_layers, cfg.n_heads)
    assert results["by_pos"].shape == (5, cfg.n_layers, N_POS, cfg.n_heads)
    for name, result in results.items():
        torch.testing.assert_close(
            result, torch.full_like(result, clean_metric), atol=1e-5, rtol=1e-5, msg=name
        )


@pytest.mark.parametrize(
    ("preset", "batch_size"),
    [
        ("get_act_patch_resid_pre", 3),
        ("get_act_patch_attn_head_out_by_pos", 1000),
        ("get_act_patch_attn_head_k_by_pos", 3),
        ("get_act_patch_attn_head_pattern_by_pos", 5),
    ],
)
def test_batched_sweep_equals_one_at_a_time(setup: Any, preset: str, batch_size: int) -> None:
    model, _, corrupted, cache = setup
    fn = getattr(patching, preset)
    one = fn(model, corrupted, cache, logit_diff, progress=False)
    batched = fn(model, corrupted, cache, logit_diff, progress=False, batch_size=batch_size)
    torch.testing.assert_close(batched, one, atol=1e-5, rtol=1e-5)


def test_batched_mode_calls_metric_per_replica(setup: Any) -> None:
    model, _, corrupted, cache = setup
    shapes: list[tuple[int, ...]] = []

    def metric(logits: torch.Tensor) -> torch.Tensor:
        shapes.append(tuple(logits.shape))
        return logit_diff(logits)

    patching.get_act_patch_resid_pre(model, corrupted, cache, metric, progress=False, batch_size=3)
    n_cells = model.cfg.n_layers * N_POS
    assert shapes == [(2, N_POS, model.cfg.d_vocab)] * n_cells


def test_every_helpers_stack_the_presets(setup: Any) -> None:
    model, _, corrupted, cache = setup
    kw: dict[str, Any] = dict(progress=False, batch_size=16)
    every = patching.get_act_patch_attn_head_by_pos_every(model, corrupted, cache, logit_diff, **kw)
    group = model.cfg.n_heads // model.cfg.n_key_value_heads
    k = patching.get_act_patch_attn_head_k_by_pos(model, corrupted, cache, logit_diff, **kw)
    torch.testing.assert_close(every[2], k.repeat_interleave(group, dim=2))
    pattern = patching.get_act_patch_attn_head_pattern_by_pos(
        model, corrupted, cache, logit_diff, **kw
    )
    torch.testing.assert_close(every[4], pattern.transpose(1, 2))
    block = patching.get_act_patch_block_every(model, corrupted, cache, logit_diff, **kw)
    mlp = patching.get_act_patch_mlp_out(model, corrupted, cache, logit_diff, **kw)
    torch.testing.assert_close(block[2], mlp)


def test_explicit_rows_and_index_df(setup: Any) -> None:
    pd = pytest.importorskip("pandas")
    model, _, corrupted, cache = setup
    full, df = patching.get_act_patch_attn_head_out_by_pos(
        model, corrupted, cache, logit_diff, return_index_df=True, progress=False, batch_size=64
    )
    assert list(df.columns) == ["layer", "pos", "head"]
    assert len(df) == full.numel()
    assert tuple(df.iloc[5]) == tuple(torch.nonzero(torch.ones_like(full))[5].tolist())

    rows = [(1, 3, 2), (0, 0, 1), (1, 0, 0)]
    for index in (pd.DataFrame(rows, columns=["layer", "pos", "head"]), rows, torch.tensor(rows)):
        flat = patching.get_act_patch_attn_head_out_by_pos(
            model, corrupted, cache, logit_diff, index_df=index, progress=False, batch_size=2
        )
        assert flat.shape == (3,)
        torch.testing.assert_close(flat, torch.stack([full[r] for r in rows]))


def test_generic_patch_with_a_custom_setter(setup: Any) -> None:
    """A setter that returns a new tensor (not editing in place) works, one or many per pass."""
    model, _, corrupted, cache = setup

    def swap_last_position(act: torch.Tensor, index: Any, clean: torch.Tensor) -> torch.Tensor:
        return torch.cat([act[:, :-1], clean[:, -1:]], dim=1)

    ref = patching.get_act_patch_resid_pre(model, corrupted, cache, logit_diff, progress=False)
    for batch_size in (1, 2):
        got = patching.generic_activation_patch(
            model, corrupted, cache, logit_diff, swap_last_position, "resid_pre",
            index_axis_names=["layer"], batch_size=batch_size, progress=False,
        )  # fmt: skip
        torch.testing.assert_close(got, ref[:, -1])


def test_errors_are_clear(setup: Any) -> None:
    model, _, corrupted, cache = setup
    with pytest.raises(ValueError, match="scalar"):
        patching.get_act_patch_resid_pre(
            model, corrupted, cache, lambda logits: logits[:, -1, 0], progress=False
        )
    with pytest.raises(ValueError, match="index_axis_names"):
        patching.generic_activation_patch(
            model, corrupted, cache, logit_diff, patching.layer_pos_patch_setter, "resid_pre"
        )
    with pytest.raises(ValueError, match="batch_size"):
        patching.get_act_patch_resid_pre(model, corrupted, cache, logit_diff, batch_size=0)


def test_reachable_from_the_package() -> None:
    assert anatomist.patching.get_act_patch_resid_pre is patching.get_act_patch_resid_pre
