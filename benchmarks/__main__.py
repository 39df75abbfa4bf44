"""`python -m benchmarks`: every section, side by side, and the results files.

    python -m benchmarks                      # everything; about 8 minutes on 2 CPU cores
    python -m benchmarks --sections forward --models gpt2
    python -m benchmarks --device cuda --dtype bfloat16 --big 8x512
    python -m benchmarks --quick --out /tmp/bench   # a smoke run (~3 minutes: loading dominates)

Writes ``<out>/<machine>.md`` (the table) and ``<out>/<machine>.json`` (every number), where
`<machine>` is ``ANATOMIST_BENCH_MACHINE`` or the CPU architecture and core count (or GPU name).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks.harness import Measurement, Target, environment, write_results
from benchmarks.processes import run_import, run_loading
from benchmarks.subjects import make_workdir, prepare_models
from benchmarks.workloads import run_generation, run_model_sections

SECTIONS = ("forward", "load", "import", "generate")  # forward covers hooks and cache too
RESULTS = Path(__file__).resolve().parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sections",
        default=",".join(SECTIONS),
        help=f"comma-separated subset of {', '.join(SECTIONS)}",
    )
    parser.add_argument(
        "--models", default="smollm2,gpt2", help="comma-separated: smollm2, gpt2, llama1b"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--small", default="1x128", help="batch x seq of the small workload")
    parser.add_argument("--big", default="8x512", help="batch x seq of the big one ('' to skip)")
    parser.add_argument("--repeats", type=int, default=7, help="repeats of the small workload")
    parser.add_argument("--big-repeats", type=int, default=2)
    parser.add_argument("--new-tokens", type=int, default=64, help="tokens per generation")
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for <machine>.md/.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.small, args.big, args.repeats, args.new_tokens = "1x16", "", 2, 4
    sections = set(args.sections.split(","))
    unknown = sections - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    dtype = getattr(torch, args.dtype)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    start = time.perf_counter()

    def log(message: str) -> None:
        print(f"[{time.perf_counter() - start:6.0f}s] {message}", flush=True)

    shapes = [_shape(args.small, args.repeats)]
    if args.big:
        shapes.append(_shape(args.big, args.big_repeats))
    rows: list[Measurement] = []
    with make_workdir() as workdir:
        log("writing the models' folders")
        models = prepare_models(Path(workdir), args.models.split(","), dtype)
        for model in models:
            if "forward" in sections:
                log(f"forward, hooks and cache: {model.name}")
                rows += run_model_sections(model, shapes, args.device, dtype, log)
            if "generate" in sections and model.gguf is not None:
                log(f"generation: {model.name}")
                rows += run_generation(model, args.new_tokens, 3, args.device, dtype)
            if "load" in sections and model.gguf is not None and args.device == "cpu":
                log(f"loading: {model.name}")
                rows += run_loading(
                    model, 1 if args.quick else 3, args.dtype, torch.get_num_threads()
                )
        if "import" in sections:
            log("import time")
            rows += run_import(2 if args.quick else 5)
    targets = check_targets(rows)
    env = environment(args.device, dtype)
    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    page = write_results(args.out, rows, targets, env, command.strip())
    print(page.read_text())
    log(f"wrote {page} and {page.with_suffix('.json')}")
    return 0


def _shape(text: str, repeats: int) -> tuple[int, int, int]:
    batch, seq = (int(x) for x in text.lower().split("x"))
    return batch, seq, repeats


def check_targets(rows: list[Measurement]) -> list[Target]:
    """The performance contract (issue 7, docs/performance.md) on this run's numbers."""
    by = {(m.workload, m.model, m.library): m for m in rows}
    targets = []
    for m in rows:
        if m.library != "anatomist":
            continue
        key = (m.workload, m.model)
        if m.section == "forward" and (hf := by.get((*key, "HF sdpa"))):
            targets.append(
                Target(
                    "forward, no hooks vs HF sdpa",
                    m.value / hf.value,
                    1.0,
                    f"{m.model}, {m.workload}",
                )
            )
        if m.section == "hooks":
            plain = by.get(
                (m.workload.replace("no-op hook per layer", "forward"), m.model, "anatomist")
            )
            if plain:
                targets.append(
                    Target(
                        "no-op hook on every layer vs our own plain forward",
                        m.value / plain.value,
                        1.05,
                        f"{m.model}, {m.workload}",
                    )
                )
        if m.section == "cache" and m.workload.startswith("run_with_cache all"):
            for peer in ("TL bridge", "TL bridge compat"):
                if theirs := by.get((*key, peer)):
                    targets.append(
                        Target(
                            f"run_with_cache all vs {peer}, time",
                            m.value / theirs.value,
                            0.8,
                            f"{m.model}, {m.workload}",
                        )
                    )
                    targets.append(
                        Target(
                            f"run_with_cache all vs {peer}, cache bytes",
                            m.extra["cache_mb"] / theirs.extra["cache_mb"],
                            1.0,
                            f"{m.model}, {m.workload}",
                        )
                    )
        if m.section == "load":
            base = by.get(("load -", m.model, "baseline"))
            if base:
                over = (m.extra["peak_mb"] - base.extra["peak_mb"]) / m.extra["weights_mb"]
                targets.append(
                    Target(
                        "load peak RSS above baseline / weights",
                        over,
                        1.3,
                        f"{m.model}, {m.workload}",
                    )
                )
            if hf := by.get((*key, "HF")):
                targets.append(
                    Target("load time vs HF", m.value / hf.value, 1.0, f"{m.model}, {m.workload}")
                )
        if m.section == "import":
            targets.append(Target("import anatomist on top of torch, seconds", m.value, 0.5, "-"))
        if m.section == "generate" and (hf := by.get((*key, "HF sdpa"))):
            targets.append(
                Target(
                    "generation time vs HF sdpa",
                    hf.value / m.value,
                    1.0,
                    f"{m.model}, {m.workload}",
                )
            )
    return targets


if __name__ == "__main__":
    sys.exit(main())
