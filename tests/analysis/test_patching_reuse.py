"""Fast sweeps (batched cells, forwards that start at the patched block) against the classic loop.

Every sweep's default call must give the classic loop's numbers (``reuse=False, batch_size=1``:
one full forward per cell) within 1e-5, on models of several shapes, in both directions
(denoising and noising), and must fall back to the classic loop when hooks are attached.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

import pytest
import torch

import anatomist
from anatomist.analysis import patching
from anatomist.analysis.path_patching import path_patch, path_patch_heads
from tests.analysis.metrics import logit_diff
from tests.helpers import randomize_small_params

N_POS = 4
BASE: dict[str, Any] = dict(n_layers=4, d_model=32, n_ctx=32, d_head=8, d_vocab=50, seed=0)
CONFIGS: dict[str, dict[str, Any]] = {
    "gpt2": dict(act_fn="gelu_new"),
    "llama_gqa": dict(
        n_heads=4, n_key_value_heads=2, act_fn="silu", normalization_type="RMS",
        positional_embedding_type="rotary", gated_mlp=True,
    ),
    "parallel_alibi": dict(act_fn="gelu", parallel_attn_mlp=True, positional_embedding_type="alibi"),
    "shortformer_attn_only": dict(attn_only=True, positional_embedding_type="shortformer"),
    "post_ln_window": dict(act_fn="relu", post_layer_norm=True, pre_norm=False, sliding_window=3),
}  # fmt: skip

PRESETS = [
    "get_act_patch_resid_pre",
    "get_act_patch_resid_mid",
    "get_act_patch_attn_out",
    "get_act_patch_mlp_out",
    "get_act_patch_attn_head_out_by_pos",
    "get_act_patch_attn_head_q_by_pos",
    "get_act_patch_attn_head_k_by_pos",
    "get_act_patch_attn_head_v_by_pos",
    "get_act_patch_attn_head_out_all_pos",
    "get_act_patch_attn_head_q_all_pos",
    "get_act_patch_attn_head_k_all_pos",
    "get_act_patch_attn_head_v_all_pos",
    "get_act_patch_attn_head_pattern_all_pos",
    "get_act_patch_attn_head_pattern_by_pos",
    "get_act_patch_attn_head_pattern_dest_src_pos",
]
EVERY = [
    "get_act_patch_block_every",
    "get_act_patch_attn_head_all_pos_every",
    "get_act_patch_attn_head_by_pos_every",
]


def build(name: str) -> anatomist.HookedTransformer:
    model = anatomist.HookedTransformer(anatomist.TransformerConfig(**BASE, **CONFIGS[name]))
    randomize_small_params(model)
    return model.eval()


@pytest.fixture(scope="module", params=sorted(CONFIGS))
def setup(request: Any) -> tuple[Any, torch.Tensor, torch.Tensor, Any, Any]:
    model = build(request.param)
    gen = torch.Generator().manual_seed(5)
    clean = torch.randint(0, model.cfg.d_vocab, (2, N_POS), generator=gen)
    corrupted = torch.randint(0, model.cfg.d_vocab, (2, N_POS), generator=gen)
    _, clean_cache = model.run_with_cache(clean)
    _, corrupted_cache = model.run_with_cache(corrupted)
    return model, clean, corrupted, clean_cache, corrupted_cache


def classic(fn: Callable[..., Any], *args: Any, **kw: Any) -> Any:
    return fn(*args, progress=False, reuse=False, batch_size=1, **kw)


def supported(model: Any, preset: str) -> bool:
    if model.cfg.attn_only and ("mlp" in preset or "resid_mid" in preset):
        return False
    return not (model.cfg.parallel_attn_mlp and "resid_mid" in preset)


@pytest.mark.parametrize("preset", PRESETS)
def test_default_sweep_equals_classic_loop(setup: Any, preset: str) -> None:
    model, _, corrupted, clean_cache, _ = setup
    if not supported(model, preset):
        pytest.skip(
            "no such activation in this model (attention-only: no MLP; parallel: no resid_mid)"
        )
    fn = getattr(patching, preset)
    fast = fn(model, corrupted, clean_cache, logit_diff, progress=False)
    slow = classic(fn, model, corrupted, clean_cache, logit_diff)
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
    with torch.no_grad():
        corrupted_metric = logit_diff(model(corrupted))
    assert (fast - corrupted_metric).abs().max() > 1e-4  # the sweep moved something


@pytest.mark.parametrize("helper", EVERY)
def test_every_helpers_and_noising(setup: Any, helper: str) -> None:
    model, clean, corrupted, clean_cache, corrupted_cache = setup
    if model.cfg.attn_only and helper == "get_act_patch_block_every":
        pytest.skip("attention-only model: no MLP")
    fn = getattr(patching, helper)
    # Denoising: run corrupted, patch clean. Noising: run clean, patch corrupted.
    for tokens, cache in ((corrupted, clean_cache), (clean, corrupted_cache)):
        fast = fn(model, tokens, cache, logit_diff, progress=False)
        slow = classic(fn, model, tokens, cache, logit_diff)
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_patched_forwards_skip_the_blocks_below(setup: Any) -> None:
    """A sweep over blocks 2 and 3 never runs blocks 0 and 1 again after the one corrupted run
    that gives their output (a counter wrapped around forward, not a hook: hooks turn the fast
    path off)."""
    model, _, corrupted, clean_cache, _ = setup
    calls = {"block0": 0, "block3": 0}

    def count(block: Any, key: str) -> None:
        original = block.forward

        def forward(*args: Any, **kw: Any) -> Any:
            calls[key] += 1
            return original(*args, **kw)

        block.forward = forward

    count(model.blocks[0], "block0")
    count(model.blocks[3], "block3")
    rows = [(layer, pos) for layer in (2, 3) for pos in range(N_POS)]
    try:
        fast = patching.get_act_patch_resid_pre(
            model, corrupted, clean_cache, logit_diff, index_df=rows, progress=False, batch_size=2
        )
        assert calls == {"block0": 1, "block3": len(rows) // 2}
        calls.update(block0=0, block3=0)
        slow = classic(
            patching.get_act_patch_resid_pre, model, corrupted, clean_cache, logit_diff,
            index_df=rows,
        )  # fmt: skip
        assert calls == {"block0": len(rows), "block3": len(rows)}
    finally:
        del model.blocks[0].forward, model.blocks[3].forward
    torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)


def test_metric_sees_the_classic_sequence_of_calls(setup: Any) -> None:
    model, _, corrupted, clean_cache, _ = setup
    seen: dict[str, list[tuple[tuple[int, ...], float]]] = {"fast": [], "slow": []}

    def recorder(key: str) -> Callable[[torch.Tensor], torch.Tensor]:
        def metric(logits: torch.Tensor) -> torch.Tensor:
            value = logit_diff(logits)
            seen[key].append((tuple(logits.shape), float(value)))
            return value

        return metric

    rows = [(3, 1), (0, 2), (2, 0), (2, 3), (1, 1)]  # out of order: calls follow the rows
    patching.get_act_patch_resid_pre(
        model, corrupted, clean_cache, recorder("fast"), index_df=rows, progress=False
    )
    classic(
        patching.get_act_patch_resid_pre, model, corrupted, clean_cache, recorder("slow"),
        index_df=rows,
    )  # fmt: skip
    assert [shape for shape, _ in seen["fast"]] == [(2, N_POS, model.cfg.d_vocab)] * len(rows)
    torch.testing.assert_close(
        torch.tensor([v for _, v in seen["fast"]]), torch.tensor([v for _, v in seen["slow"]])
    )


def test_attached_hook_falls_back_to_the_classic_loop_and_warns_once(setup: Any) -> None:
    model, _, corrupted, clean_cache, _ = setup

    def nudge(act: torch.Tensor, hook: Any) -> torch.Tensor:
        # A direction, not a constant: LayerNorm removes constants. Changes every later block.
        return act + torch.linspace(-0.5, 0.5, act.shape[-1])

    fn = (
        patching.get_act_patch_attn_head_all_pos_every
        if model.cfg.attn_only
        else patching.get_act_patch_block_every
    )
    model.add_hook("blocks.0.hook_resid_post", nudge)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got = fn(model, corrupted, clean_cache, logit_diff, progress=False)
        ours = [w for w in caught if "classic loop" in str(w.message)]
        assert len(ours) == 1  # one sweep, one warning, though it runs several presets
        assert "blocks.0.hook_resid_post" in str(ours[0].message)
        expected = classic(fn, model, corrupted, clean_cache, logit_diff)
    finally:
        model.reset_hooks(including_permanent=True)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    without_hook = fn(model, corrupted, clean_cache, logit_diff, progress=False)
    assert (without_hook - got).abs().max() > 1e-4  # the hook was really in play


def test_batch_from_the_memory_budget(setup: Any) -> None:
    model, _, corrupted, clean_cache, _ = setup
    forwards = {"n": 0}
    original = model.unembed.forward

    def unembed(*args: Any, **kw: Any) -> Any:
        forwards["n"] += 1
        return original(*args, **kw)

    model.unembed.forward = unembed
    n_cells = model.cfg.n_layers * N_POS
    try:
        one = patching.get_act_patch_resid_pre(
            model, corrupted, clean_cache, logit_diff, progress=False, memory_budget=1
        )
        assert forwards["n"] == n_cells  # a budget below one cell: one cell per forward
        forwards["n"] = 0
        many = patching.get_act_patch_resid_pre(
            model, corrupted, clean_cache, logit_diff, progress=False
        )
        assert forwards["n"] == 1  # the default budget holds the whole tiny sweep
    finally:
        del model.unembed.forward
    torch.testing.assert_close(one, many, atol=1e-5, rtol=0)


def test_path_patching_default_equals_full_passes(setup: Any) -> None:
    model, _, corrupted, clean_cache, corrupted_cache = setup
    receivers_list: list[Any] = [
        None,
        ["blocks.2.attn.hook_q", ("blocks.3.attn.hook_v", 1)],
        "ln_final.hook_normalized",
        "blocks.1.hook_resid_pre",  # before most senders: they reach it through nothing
    ]
    for receivers in receivers_list:
        fast = path_patch_heads(
            model, corrupted, clean_cache, logit_diff, receivers, progress=False
        )
        slow = path_patch_heads(
            model, corrupted, clean_cache, logit_diff, receivers, progress=False, reuse=False,
            batch_size=1,
        )  # fmt: skip
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0, msg=str(receivers))
    one = path_patch(
        model, corrupted, clean_cache, logit_diff, [(1, 0), (2, 1)], "blocks.3.hook_resid_pre"
    )
    full = path_patch(
        model, corrupted, clean_cache, logit_diff, [(1, 0), (2, 1)], "blocks.3.hook_resid_pre",
        reuse=False,
    )  # fmt: skip
    assert abs(one - full) <= 1e-5


def test_bad_sweep_arguments_are_refused(setup: Any) -> None:
    model, _, corrupted, clean_cache, _ = setup
    for bad in (0, -2, True):
        with pytest.raises(ValueError, match="batch_size"):
            patching.get_act_patch_resid_pre(
                model, corrupted, clean_cache, logit_diff, batch_size=bad
            )
    with pytest.raises(ValueError, match="memory_budget"):
        patching.get_act_patch_resid_pre(model, corrupted, clean_cache, logit_diff, memory_budget=0)
