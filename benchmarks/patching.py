"""The patching section: activation-patching sweeps on SmolLM2's IOI prompt pair.

Clean: "When John and Mary went to the store, John gave a cold drink to"; corrupted: the same
with the second John swapped for Mary (same token length: 16 tokens with BOS, the length the
issue measured). At 16 tokens or more a forward of one prompt and a batched one run the same
matrix-multiply kernel; below 16 rows this CPU's BLAS picks another kernel for the weights'
[out, in] layout, and the classic loop (one prompt per forward) then differs from any batched
run by float32 rounding (~2e-5 on this metric: docs/patching.md). The metric is the logit difference
``logits[:, -1, " Mary"] - logits[:, -1, " John"]`` (mean over the batch), a function of the
logits only, so the library may batch cells.

Two sweeps: ``resid_pre sweep`` (every layer x every position of ``blocks.{l}.hook_resid_pre``,
`get_act_patch_resid_pre`) and ``head out sweep`` (every layer x every head of
``blocks.{l}.attn.hook_z`` at all positions, `get_act_patch_attn_head_out_all_pos`). Rows:

- ``anatomist``: the library's default call, ``preset(model, corrupted, clean_cache, metric,
  progress=False)``, whatever its defaults do (batching, starting at the patched layer...);
- ``anatomist loop``: the classic loop written here, one ``run_with_hooks`` per cell with a hook
  that puts the clean value back at that cell, then the metric;
- ``TL bridge loop``: the same loop on transformer-lens's TransformerBridge (when installed),
  on every 5th layer only (it would double the section's time), a workload of its own with the
  anatomist default and loop on the same cells.

`max_abs_diff` (extra) is the largest difference between a row's results and the anatomist
loop's on the same cells. Each sweep runs once (no repeats): the full SmolLM2 sweeps are 450 and
270 forwards, ~45 s and ~30 s for the loop on 2 CPU cores; the whole section takes about
2-3 minutes there.
"""

from __future__ import annotations

import importlib.util
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from benchmarks.harness import Measurement
from benchmarks.subjects import ModelFolder

CLEAN = "When John and Mary went to the store, John gave a cold drink to"
CORRUPTED = "When John and Mary went to the store, Mary gave a cold drink to"


@dataclass
class Sweep:
    label: str  # the workload's name, e.g. "resid_pre sweep"
    preset: str  # the anatomist.patching function
    hook: str  # hook name, with {layer}
    axis: str  # the second axis: "pos" or "head"


SWEEPS = (
    Sweep("resid_pre sweep", "get_act_patch_resid_pre", "blocks.{layer}.hook_resid_pre", "pos"),
    Sweep(
        "head out sweep",
        "get_act_patch_attn_head_out_all_pos",
        "blocks.{layer}.attn.hook_z",
        "head",
    ),
)


@dataclass
class Task:
    clean: Tensor  # [1, pos]
    corrupted: Tensor  # [1, pos]
    right: int  # " Mary"
    wrong: int  # " John"

    def metric(self, logits: Tensor) -> Tensor:
        return (logits[:, -1, self.right] - logits[:, -1, self.wrong]).mean()


def ioi_task(model: Any, clean: str = CLEAN, corrupted: str = CORRUPTED) -> Task:
    """The IOI pair tokenized by `model`; the answers are the names' single tokens."""
    a, b = model.to_tokens(clean), model.to_tokens(corrupted)
    if a.shape != b.shape:
        raise ValueError(f"clean and corrupted prompts differ in length: {a.shape} vs {b.shape}")
    right = model.to_tokens(" Mary", prepend_bos=False)[0]
    wrong = model.to_tokens(" John", prepend_bos=False)[0]
    if len(right) != 1 or len(wrong) != 1:
        raise ValueError("' Mary' and ' John' must be single tokens for the logit difference")
    return Task(a, b, int(right[0]), int(wrong[0]))


def sweep_cells(
    sweep: Sweep, layers: Sequence[int], n_pos: int, n_heads: int
) -> list[tuple[int, int]]:
    """(layer, pos) or (layer, head) cells, layer-major, as the presets order them."""
    width = n_pos if sweep.axis == "pos" else n_heads
    return [(layer, i) for layer in layers for i in range(width)]


def _cell_hook(axis: str, index: int, clean: Tensor) -> Callable[..., Tensor]:
    def hook(activation: Tensor, hook: Any) -> Tensor:
        activation = activation.clone()  # the hooked tensor may be shared (resid_pre)
        if axis == "pos":
            activation[:, index] = clean[:, index]
        else:  # [batch, pos, head, d_head]
            activation[:, :, index] = clean[:, :, index]
        return activation

    return hook


def classic_loop(
    run_with_hooks: Callable[..., Tensor],
    tokens: Tensor,
    clean_cache: Any,
    metric: Callable[[Tensor], Tensor],
    sweep: Sweep,
    cells: Sequence[tuple[int, int]],
    sync: Callable[[], None] = lambda: None,
) -> tuple[Tensor, list[float]]:
    """One forward per cell with the clean value patched in: the metric per cell and the
    seconds of each."""
    values, seconds = [], []
    with torch.no_grad():
        for layer, index in cells:
            name = sweep.hook.format(layer=layer)
            start = time.perf_counter()
            logits = run_with_hooks(
                tokens, fwd_hooks=[(name, _cell_hook(sweep.axis, index, clean_cache[name]))]
            )
            values.append(float(metric(logits)))
            sync()
            seconds.append(time.perf_counter() - start)
    return torch.tensor(values), seconds


def default_call(
    model: Any,
    task: Task,
    clean_cache: Any,
    sweep: Sweep,
    cells: Sequence[tuple[int, int]],
    all_layers: bool,
) -> Tensor:
    """The library's preset as a user calls it: the full sweep, or the given cells through
    `index_df` (a pandas DataFrame, the classic way). Flat, in `cells` order."""
    from anatomist import patching

    preset = getattr(patching, sweep.preset)
    if all_layers:
        result = preset(model, task.corrupted, clean_cache, task.metric, progress=False)
    else:
        import pandas as pd

        index = pd.DataFrame(list(cells), columns=["layer", sweep.axis])
        result = preset(
            model, task.corrupted, clean_cache, task.metric, index_df=index, progress=False
        )
    return result.flatten().float().cpu()


def _names_filter(sweep: Sweep, layers: Sequence[int]) -> Callable[[str], bool]:
    names = {sweep.hook.format(layer=layer) for layer in layers}
    return lambda name: name in names


def patching_rows(
    model_name: str,
    ours: Any,
    task: Task,
    layer_step: int = 1,
    bridge: Any = None,
    bridge_step: int = 5,
    sync: Callable[[], None] = lambda: None,
    log: Callable[[str], None] = lambda message: None,
) -> list[Measurement]:
    """Both sweeps over every `layer_step`-th layer: the default call, the classic loop, and
    (with a `bridge`) the bridge's loop over every `bridge_step`-th of those layers."""
    n_layers, n_pos, n_heads = ours.cfg.n_layers, task.corrupted.shape[1], ours.cfg.n_heads
    layers = list(range(0, n_layers, layer_step))
    all_layers = layer_step == 1
    bridge_layers = list(range(0, n_layers, max(bridge_step, layer_step)))
    rows: list[Measurement] = []
    for sweep in SWEEPS:
        cells = sweep_cells(sweep, layers, n_pos, n_heads)
        width = n_pos if sweep.axis == "pos" else n_heads
        workload = _workload(sweep, layers, n_layers, width)
        _, cache = ours.run_with_cache(task.clean, names_filter=_names_filter(sweep, layers))
        log(f"    {workload}: default call, then the loop ({len(cells)} forwards)")
        start = time.perf_counter()
        default = default_call(ours, task, cache, sweep, cells, all_layers)
        sync()
        default_s = time.perf_counter() - start
        loop, loop_times = classic_loop(
            ours.run_with_hooks, task.corrupted, cache, task.metric, sweep, cells, sync
        )
        diff = float((default - loop).abs().max())
        rows += [
            _row(workload, model_name, "anatomist", default_s, len(cells), diff),
            _row(workload, model_name, "anatomist loop", sum(loop_times), len(cells), 0.0),
        ]
        if bridge is None:
            continue
        subset = [i for i, cell in enumerate(cells) if cell[0] in bridge_layers]
        sub_cells = [cells[i] for i in subset]
        sub_workload = workload
        if bridge_layers != layers:
            sub_workload = _workload(sweep, bridge_layers, n_layers, width)
            start = time.perf_counter()
            sub_default = default_call(ours, task, cache, sweep, sub_cells, False)
            sync()
            sub_s = time.perf_counter() - start
            sub_diff = float((sub_default - loop[subset]).abs().max())
            rows += [
                _row(sub_workload, model_name, "anatomist", sub_s, len(sub_cells), sub_diff),
                _row(
                    sub_workload,
                    model_name,
                    "anatomist loop",
                    sum(loop_times[i] for i in subset),
                    len(sub_cells),
                    0.0,
                ),
            ]
        log(f"    {sub_workload}: the bridge's loop ({len(sub_cells)} forwards)")
        _, bridge_cache = bridge.run_with_cache(
            task.clean, names_filter=_names_filter(sweep, bridge_layers)
        )
        theirs, their_times = classic_loop(
            bridge.run_with_hooks, task.corrupted, bridge_cache, task.metric, sweep, sub_cells, sync
        )
        their_diff = float((theirs - loop[subset]).abs().max())
        rows.append(
            _row(
                sub_workload,
                model_name,
                "TL bridge loop",
                sum(their_times),
                len(sub_cells),
                their_diff,
            )
        )
    return rows


def _workload(sweep: Sweep, layers: list[int], n_layers: int, width: int) -> str:
    shape = f"{len(layers)}x{width}"
    if len(layers) == n_layers:
        return f"{sweep.label} {shape}"
    step = layers[1] - layers[0] if len(layers) > 1 else n_layers
    return f"{sweep.label} every {step}th layer {shape}"


def _row(
    workload: str, model: str, library: str, seconds: float, cells: int, diff: float
) -> Measurement:
    extra = {"cells": float(cells), "ms_per_cell": 1000 * seconds / cells, "max_abs_diff": diff}
    return Measurement("patching", workload, model, library, seconds, "s", 1, extra)


def run_patching(
    model: ModelFolder,
    device: str,
    dtype: torch.dtype,
    log: Callable[[str], None],
    layer_step: int = 1,
    bridge_step: int = 5,
) -> list[Measurement]:
    """The section on `model` (a real checkpoint: SmolLM2), with the bridge when installed."""
    import anatomist

    ours = anatomist.HookedTransformer.from_pretrained_no_processing(
        str(model.path), device=device, dtype=dtype, progress=False
    )
    task = ioi_task(ours)
    task.clean, task.corrupted = task.clean.to(device), task.corrupted.to(device)
    bridge = None
    if importlib.util.find_spec("transformer_lens") is not None:
        from transformer_lens.model_bridge import TransformerBridge

        bridge = TransformerBridge.boot_transformers(str(model.path), device=device, dtype=dtype)
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    with torch.no_grad():  # warm-up: one forward each
        ours(task.corrupted)
        if bridge is not None:
            bridge(task.corrupted)
    return patching_rows(model.name, ours, task, layer_step, bridge, bridge_step, sync, log)
