"""Timing, records and the results files shared by every benchmark section.

Every time is the best (minimum) of interleaved repeats: each round calls every library once,
in the same order, so a slow spell of the machine (other work on its cores, a virtual machine's
neighbours) hits all of them alike; and, as with `timeit`, the minimum is the run least disturbed
by such spells, which only ever add time. Medians moved by 5-20% between runs on a shared 2-core
machine; minima by a few percent.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch


@dataclass
class Measurement:
    """One library's best time (or rate) on one workload."""

    section: str  # forward, hooks, cache, flops, patching, load, import, generate
    workload: str  # e.g. "forward 1x128"
    model: str
    library: str
    value: float  # seconds (or tokens/s for generation, GFLOP/s for flops)
    unit: str = "ms"  # how `value` is shown: ms, s, tokens/s, GFLOP/s
    repeats: int = 0
    extra: dict[str, float] = field(default_factory=dict)  # cache_mb, peak_mb, ...


@dataclass
class Target:
    """One of the performance contract's targets, checked on this run's numbers."""

    name: str
    measured: float
    limit: float
    detail: str
    higher_is_better: bool = False  # the limit is a floor (a rate), not a ceiling

    @property
    def holds(self) -> bool:
        # A NaN (nothing to compare, e.g. a peer with no measurable overhead) never holds.
        if self.higher_is_better:
            return self.measured >= self.limit
        return self.measured <= self.limit

    @property
    def bound(self) -> str:
        return f"{'>=' if self.higher_is_better else '<='} {_number(self.limit)}"


def _number(x: float) -> str:
    """Two decimals, or two significant digits for small non-zero values (1e-5 bounds)."""
    if x != 0 and abs(x) < 0.01:
        return f"{x:.1e}"
    return f"{x:.2f}"


def interleaved_times(
    fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 0
) -> dict[str, list[float]]:
    """Every time (seconds) of each callable, called round-robin `repeats` times after
    `warmup` rounds, so a slow spell of the machine hits all of them alike."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def interleaved(
    fns: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1
) -> dict[str, float]:
    """Best seconds of each callable, called round-robin `repeats` times after `warmup`."""
    times = interleaved_times(fns, repeats, warmup)
    return {name: min(t) for name, t in times.items()}


def machine_name(device: str) -> str:
    """A name for the results file that stays the same across runs on one kind of machine."""
    name = os.environ.get("ANATOMIST_BENCH_MACHINE")
    if name:
        return name
    if device.startswith("cuda") and torch.cuda.is_available():
        gpu = torch.cuda.get_device_name(0).replace("NVIDIA ", "").replace(" ", "-")
        return f"{platform.machine()}-{gpu}".lower()
    return f"{platform.machine()}-{os.cpu_count()}cpu".lower()


def environment(device: str, dtype: torch.dtype) -> dict[str, Any]:
    import transformers

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "device": device,
        "dtype": str(dtype).removeprefix("torch."),
        "date": time.strftime("%Y-%m-%d %H:%M"),
    }
    for package in ("transformer_lens", "nnsight"):
        try:
            from importlib.metadata import version

            info[package] = version(package.replace("_", "-"))
        except Exception:
            info[package] = None
    return info


def _show(m: Measurement) -> str:
    if m.unit == "ms":
        return f"{m.value * 1000:.1f}"
    if m.unit == "s":
        return f"{m.value:.2f}"
    return f"{m.value:.1f}"


def markdown(
    measurements: Iterable[Measurement],
    targets: Iterable[Target],
    env: Mapping[str, Any],
    command: str,
) -> str:
    """The results page: the targets first, then every measurement with its ratio to anatomist."""
    rows = list(measurements)
    lines = [
        f"# Benchmarks on {machine_name(str(env['device']))}",
        "",
        f"`{command}` on {env['date']}: "
        + ", ".join(f"{k} {v}" for k, v in env.items() if k != "date"),
        "",
        "Best of interleaved repeats, one process. Ratios are anatomist / the other library,",
        "so below 1.0 means anatomist is faster or smaller (for tokens/s and GFLOP/s, above 1.0",
        "is faster). The patching sweeps run once each (no repeats).",
        "See docs/performance.md for how to read and rerun this.",
        "",
        "## Targets",
        "",
        "| target | measured | limit | holds |",
        "|---|---:|---:|---|",
    ]
    for t in targets:
        mark = "yes" if t.holds else "**no**"
        lines.append(f"| {t.name} ({t.detail}) | {_number(t.measured)} | {t.bound} | {mark} |")
    lines += [
        "",
        "## Measurements",
        "",
        "| section | workload | model | library | best | unit | vs anatomist | extra |",
        "|---|---|---|---|---:|---|---:|---|",
    ]
    ours = {(m.workload, m.model): m for m in rows if m.library == "anatomist"}
    for m in rows:
        base = ours.get((m.workload, m.model))
        ratio = ""
        if base is not None and m.library != "anatomist" and m.value > 0:
            ratio = f"{base.value / m.value:.2f}"
        extra = ", ".join(
            f"{k} {v:.0f}" if v >= 10 else f"{k} {_number(v)}" for k, v in m.extra.items()
        )
        lines.append(
            f"| {m.section} | {m.workload} | {m.model} | {m.library} | {_show(m)} | {m.unit} "
            f"| {ratio} | {extra} |"
        )
    return "\n".join(lines) + "\n"


def write_results(
    folder: Path,
    measurements: list[Measurement],
    targets: list[Target],
    env: Mapping[str, Any],
    command: str,
) -> Path:
    """Write `<machine>.md` and `<machine>.json` into `folder`; return the markdown path."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = machine_name(str(env["device"]))
    page = folder / f"{stem}.md"
    page.write_text(markdown(measurements, targets, env, command))
    data = {
        "environment": dict(env),
        "command": command,
        "targets": [asdict(t) | {"holds": t.holds} for t in targets],
        "measurements": [asdict(m) for m in measurements],
    }
    (folder / f"{stem}.json").write_text(json.dumps(data, indent=1) + "\n")
    return page


def tensor_bytes(value: object) -> int:
    """Bytes of every tensor reachable from `value` (dicts, sequences, objects with tensors)."""
    seen: set[int] = set()

    def walk(v: object, depth: int) -> int:
        if depth > 6 or id(v) in seen:
            return 0
        seen.add(id(v))
        if isinstance(v, torch.Tensor):
            return v.numel() * v.element_size()
        if isinstance(v, Mapping):
            return sum(walk(x, depth + 1) for x in v.values())
        if isinstance(v, (list, tuple)):
            return sum(walk(x, depth + 1) for x in v)
        return 0

    return walk(value, 0)
