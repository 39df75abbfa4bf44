"""A trial of `torch.compile` for HookedTransformer's forward on this machine's CPU.

    .venv/bin/python -m benchmarks.compile_trial                # GPT-2 small and SmolLM2
    .venv/bin/python -m benchmarks.compile_trial --quick        # GPT-2 small, 1x128 and 2x64
    .venv/bin/python -m benchmarks.compile_trial --models gpt2 --dynamic --threads 1

On a machine shared with other work (more runnable processes than cores), use ``--threads 1``:
with two threads every parallel op waits at a barrier for a thread that is not running, which
made GPT-2 small's eager 1x128 forward 4x slower (3.3 s against 0.8 s with one thread) and
would measure the stalls rather than the code.

The question: is a compiled forward worth offering (an opt-in like ``model.compile_forward()``)?
The bar: at least 1.2x faster than eager, logits within 1e-5 of eager's. For each model it
measures, under ``torch.inference_mode``:

(a) the forward without hooks, eager against ``torch.compile(model)`` in the variants below:
    compile time (the first call), whether a second shape compiles again, the largest logit
    difference from eager, and the median of interleaved repeats (each round calls eager, then
    the compiled model, on the same ids; `benchmarks.harness.interleaved` keeps the minimum,
    this keeps every time so both the median and the minimum are shown);
(b) the same with caching hooks on every layer's ``hook_resid_post``: through
    ``run_with_cache`` (new hook functions each call), and with one fixed set of caching hooks
    added once: how many graphs each call compiles anew, and the time against eager;
and counts the graphs and graph breaks with ``torch._dynamo.explain``.

Variants: ``default`` (dynamic=False; dynamic=None with --dynamic), ``max-autotune-no-cudagraphs``
(with --autotune), and ``friendly``: the model's two data-dependent Python checks (token ids in
range, `mlp._all_zero` skipping zero biases) switched off while tracing, by patching them in this
process only. It shows what compiling could give if the forward were written for it: an upper
bound, not something the library does.

Nothing is written to disk; the tables are printed (markdown) at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch._dynamo
from torch import Tensor

import anatomist
from anatomist.model import mlp as mlp_module
from anatomist.model import transformer as transformer_module
from benchmarks.harness import interleaved_times

BAR_SPEEDUP = 1.2
BAR_DIFF = 1e-5

GPT2_SMALL = dict(  # GPT-2 small's shape, random init
    n_layers=12,
    d_model=768,
    n_ctx=1024,
    d_head=64,
    n_heads=12,
    d_mlp=3072,
    d_vocab=50257,
    act_fn="gelu_new",
    normalization_type="LN",
)


@dataclass
class Row:
    model: str
    variant: str
    shape: str
    compile_s: float  # first call of the compiled model at this shape (compiling + running)
    new_graphs: int  # graphs compiled by that first call
    eager_ms: float  # median
    compiled_ms: float  # median
    eager_min_ms: float
    compiled_min_ms: float
    max_diff: float
    repeats: int
    note: str = ""

    @property
    def speedup(self) -> float:
        return self.eager_ms / self.compiled_ms

    @property
    def passes(self) -> bool:
        return self.speedup >= BAR_SPEEDUP and self.max_diff <= BAR_DIFF


@dataclass
class HookRow:
    model: str
    how: str
    shape: str
    graphs_per_call: list[int]  # graphs compiled anew by each call
    eager_ms: float
    compiled_ms: float
    max_diff: float  # over the cached activations and the logits
    repeats: int

    @classmethod
    def of(
        cls,
        model: str,
        how: str,
        shape: str,
        graphs: list[int],
        times: dict[str, list[float]],
        max_diff: float,
        repeats: int,
    ) -> HookRow:
        """A row from `interleaved_times`' seconds of the "eager" and "compiled" calls."""
        eager, compiled = (statistics.median(times[k]) * 1e3 for k in ("eager", "compiled"))
        return cls(model, how, shape, graphs, eager, compiled, max_diff, repeats)


@dataclass
class Explained:
    model: str
    what: str
    graphs: int
    breaks: int
    reasons: Counter[str] = field(default_factory=Counter)


def unique_graphs() -> int:
    return int(torch._dynamo.utils.counters["stats"]["unique_graphs"])


@contextlib.contextmanager
def compile_friendly() -> Iterator[None]:
    """Switch off, while dynamo traces, the forward's two checks that read tensor values in
    Python (each a graph break): the token-id range check and the zero-bias skip (the bias is
    then always added, which changes nothing but time). Eager runs are unaffected."""
    all_zero = mlp_module._all_zero
    check_ids = transformer_module.check_token_ids

    def all_zero_traced(b: Tensor) -> bool:
        return False if torch.compiler.is_compiling() else all_zero(b)

    def check_ids_traced(ids: Tensor, *args: Any, **kwargs: Any) -> None:
        if not torch.compiler.is_compiling():
            check_ids(ids, *args, **kwargs)

    mlp_module._all_zero = all_zero_traced  # type: ignore[assignment]
    transformer_module.check_token_ids = check_ids_traced  # type: ignore[assignment]
    try:
        yield
    finally:
        mlp_module._all_zero = all_zero
        transformer_module.check_token_ids = check_ids


def explain(model_name: str, what: str, fn: Callable[[], object]) -> Explained:
    torch._dynamo.reset()
    result = torch._dynamo.explain(fn)()
    reasons: Counter[str] = Counter()
    for b in result.break_reasons:
        frame = b.user_stack[-1] if b.user_stack else None
        where = f" ({frame.filename.rsplit('/', 1)[-1]}:{frame.lineno})" if frame else ""
        reasons[b.reason.splitlines()[0][:80] + where] += 1
    torch._dynamo.reset()
    return Explained(model_name, what, result.graph_count, result.graph_break_count, reasons)


def trial_forward(
    model_name: str,
    model: anatomist.HookedTransformer,
    variant: str,
    options: dict[str, Any],
    shapes: list[tuple[int, int]],
    repeats: dict[tuple[int, int], int],
    friendly: bool,
) -> list[Row]:
    """(a): compile `model` with `options`, call it at each shape in turn, time each shape."""
    torch._dynamo.reset()
    torch.manual_seed(1)
    ids = {s: torch.randint(0, model.cfg.d_vocab, s) for s in shapes}
    rows = []
    with contextlib.ExitStack() as stack:
        if friendly:
            stack.enter_context(compile_friendly())
        compiled = torch.compile(model, **options)
        for shape in shapes:
            x = ids[shape]
            label = f"{shape[0]}x{shape[1]}"
            reference = model(x)
            before = unique_graphs()
            start = time.perf_counter()
            out = compiled(x)
            first = time.perf_counter() - start
            new = unique_graphs() - before
            diff = (out - reference).abs().max().item()
            times = interleaved_times(
                {"eager": lambda x=x: model(x), "compiled": lambda x=x: compiled(x)},
                repeats[shape],
            )
            note = ""
            if shape == shapes[0]:  # a call after the timing must not compile again
                before = unique_graphs()
                compiled(x)
                note = "" if unique_graphs() == before else "recompiles on a repeated call"
            rows.append(
                Row(
                    model_name,
                    variant,
                    label,
                    first,
                    new,
                    statistics.median(times["eager"]) * 1e3,
                    statistics.median(times["compiled"]) * 1e3,
                    min(times["eager"]) * 1e3,
                    min(times["compiled"]) * 1e3,
                    diff,
                    repeats[shape],
                    note,
                )
            )
            print(_row_line(rows[-1]), flush=True)
    torch._dynamo.reset()
    return rows


def trial_hooks(
    model_name: str,
    model: anatomist.HookedTransformer,
    shape: tuple[int, int],
    calls: int,
) -> list[HookRow]:
    """(b): the model compiled in place (`nn.Module.compile`, so `run_with_cache`'s own
    ``self(...)`` runs compiled), with caching hooks on every layer's resid_post."""
    names = [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]
    torch.manual_seed(2)
    x = torch.randint(0, model.cfg.d_vocab, shape)
    label = f"{shape[0]}x{shape[1]}"
    eager_logits, eager_cache = model.run_with_cache(x, names_filter=names)
    rows = []

    def diff_of(logits: Tensor, cache: dict[str, Tensor]) -> float:
        worst = (logits - eager_logits).abs().max().item()
        for n in names:
            worst = max(worst, (cache[n] - eager_cache[n]).abs().max().item())
        return worst

    # b1: run_with_cache, which adds fresh hook functions on every call.
    torch._dynamo.reset()
    model.compile(dynamic=False)
    try:
        graphs, worst = [], 0.0
        for _ in range(calls):
            before = unique_graphs()
            logits, cache = model.run_with_cache(x, names_filter=names)
            graphs.append(unique_graphs() - before)
            worst = max(worst, diff_of(logits, dict(cache.items())))
        times = interleaved_times(
            {
                "eager": lambda: _eager_call(
                    model, lambda: model.run_with_cache(x, names_filter=names)
                ),
                "compiled": lambda: model.run_with_cache(x, names_filter=names),
            },
            calls,
        )
        before = unique_graphs()
        model.run_with_cache(x, names_filter=names)
        graphs.append(unique_graphs() - before)
        rows.append(
            HookRow.of(model_name, "run_with_cache each call", label, graphs, times, worst, calls)
        )
        print(rows[-1], flush=True)

        # b2: one fixed set of caching hooks, added once; the plain forward called repeatedly.
        torch._dynamo.reset()
        store, fwd, _ = model.get_caching_hooks(names)
        for name, hook in fwd:
            model.add_hook(name, hook)
        try:
            graphs, worst = [], 0.0
            for _ in range(2):
                before = unique_graphs()
                logits = model(x)
                graphs.append(unique_graphs() - before)
                worst = max(worst, diff_of(logits, store))
            times = interleaved_times(
                {
                    "eager": lambda: _eager_call(model, lambda: model(x)),
                    "compiled": lambda: model(x),
                },
                calls,
            )
            before = unique_graphs()
            model(x)
            graphs.append(unique_graphs() - before)
        finally:
            model.reset_hooks()
            model.is_caching = False
        rows.append(
            HookRow.of(
                model_name, "fixed caching hooks, added once", label, graphs, times, worst, calls
            )
        )
        print(rows[-1], flush=True)
    finally:
        model._compiled_call_impl = None  # undo nn.Module.compile
        torch._dynamo.reset()
    return rows


def _eager_call(model: torch.nn.Module, fn: Callable[[], object]) -> object:
    """Run `fn` with `model`'s in-place compilation switched off for the call."""
    compiled = model._compiled_call_impl
    model._compiled_call_impl = None
    try:
        return fn()
    finally:
        model._compiled_call_impl = compiled


def _row_line(r: Row) -> str:
    return (
        f"| {r.model} | {r.variant} | {r.shape} | {r.compile_s:.1f} | {r.new_graphs} "
        f"| {r.eager_ms:.1f} | {r.compiled_ms:.1f} | {r.speedup:.2f} "
        f"| {r.eager_min_ms:.1f} / {r.compiled_min_ms:.1f} | {r.max_diff:.1e} | {r.repeats} "
        f"| {'yes' if r.passes else 'no'} | {r.note} |"
    )


def load(name: str) -> anatomist.HookedTransformer:
    if name == "smollm2":
        model = anatomist.HookedTransformer.from_pretrained(
            "smollm2-135m-instruct", dtype=torch.float32, progress=False
        )
    elif name == "gpt2":
        torch.manual_seed(0)
        model = anatomist.HookedTransformer(GPT2_SMALL)
    elif name == "tiny":  # a smoke test of this script
        torch.manual_seed(0)
        model = anatomist.HookedTransformer(
            GPT2_SMALL | dict(n_layers=2, d_model=64, d_head=16, n_heads=4, d_mlp=256, d_vocab=1000)
        )
    else:
        raise ValueError(f"unknown model {name!r}; choose from smollm2, gpt2, tiny")
    return model.eval()


def parse_shape(text: str) -> tuple[int, int]:
    batch, _, tokens = text.partition("x")
    return int(batch), int(tokens)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="GPT-2 small, 1x128 and 2x64")
    parser.add_argument("--models", default="gpt2,smollm2", help="comma-separated: gpt2,smollm2")
    parser.add_argument("--shapes", default="1x128,8x512", help="batch x tokens, in call order")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds at the first shape")
    parser.add_argument("--big-repeats", type=int, default=3, help="timed rounds at the others")
    parser.add_argument("--dynamic", action="store_true", help="also dynamic=None")
    parser.add_argument("--autotune", action="store_true", help="also max-autotune-no-cudagraphs")
    parser.add_argument("--no-friendly", action="store_true", help="skip the friendly variant")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's own choice)"
    )
    parser.add_argument("--no-hooks", action="store_true", help="skip (b)")
    args = parser.parse_args()
    if args.quick:
        args.models, args.shapes, args.repeats, args.big_repeats = "gpt2", "1x128,2x64", 5, 5
    shapes = [parse_shape(s) for s in args.shapes.split(",")]
    repeats = {s: (args.repeats if i == 0 else args.big_repeats) for i, s in enumerate(shapes)}

    variants: list[tuple[str, dict[str, Any], bool]] = [("default", {"dynamic": False}, False)]
    if args.dynamic:
        variants.append(("default, dynamic=None", {"dynamic": None}, False))
    if args.autotune:
        variants.append(
            ("max-autotune-no-cudagraphs", {"mode": "max-autotune-no-cudagraphs"}, False)
        )
    if not args.no_friendly:
        variants.append(("friendly (upper bound)", {"dynamic": False}, True))

    if args.threads:
        torch.set_num_threads(args.threads)
    load_avg = os.getloadavg()
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cpus, "
        f"load average {load_avg[0]:.1f}",
        flush=True,
    )
    rows: list[Row] = []
    hook_rows: list[HookRow] = []
    explained: list[Explained] = []
    for name in args.models.split(","):
        model = load(name)
        shown = {"gpt2": "GPT-2 small (random)", "smollm2": "SmolLM2-135M"}.get(name, name)
        with torch.inference_mode():
            x = torch.zeros(shapes[0], dtype=torch.long)
            resid = [f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)]

            def forward(model: anatomist.HookedTransformer = model, x: Tensor = x) -> object:
                return model(x)

            def cached(model: anatomist.HookedTransformer = model, x: Tensor = x) -> object:
                return model.run_with_cache(x, names_filter=resid)  # noqa: B023 (called here)

            explained.append(explain(shown, "forward", forward))
            explained.append(explain(shown, "run_with_cache(resid_post)", cached))
            with compile_friendly():
                explained.append(explain(shown, "forward, friendly", forward))
                explained.append(explain(shown, "run_with_cache(resid_post), friendly", cached))
            for e in explained[-4:]:
                print(e, flush=True)
            for variant, options, friendly in variants:
                rows += trial_forward(shown, model, variant, options, shapes, repeats, friendly)
            if not args.no_hooks:
                hook_rows += trial_hooks(shown, model, shapes[0], calls=3)
        del model

    print("\n## (a) forward without hooks (times in ms, median of interleaved rounds)\n")
    print(
        "| model | variant | shape | first call s | graphs compiled | eager | compiled | speedup "
        "| min eager / compiled | max abs diff | rounds | passes | note |"
    )
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        print(_row_line(r))
    if hook_rows:
        print("\n## (b) caching hooks on every hook_resid_post (ms)\n")
        print(
            "| model | how | shape | graphs compiled per call | eager | compiled | speedup "
            "| max abs diff |"
        )
        print("|---|---|---|---|---:|---:|---:|---:|")
        for h in hook_rows:
            print(
                f"| {h.model} | {h.how} | {h.shape} | {h.graphs_per_call} | {h.eager_ms:.1f} "
                f"| {h.compiled_ms:.1f} | {h.eager_ms / h.compiled_ms:.2f} | {h.max_diff:.1e} |"
            )
    print("\n## graphs and graph breaks (torch._dynamo.explain, at the first shape)\n")
    for e in explained:
        print(f"- {e.model}, {e.what}: {e.graphs} graphs, {e.breaks} breaks")
        for reason, count in e.reasons.most_common():
            print(f"  - {count} x {reason}")
    print(
        f"\nLoad average (1 min) at the start {load_avg[0]:.1f}, at the end {os.getloadavg()[0]:.1f}"
        f" on {os.cpu_count()} cpus: other work on the machine slows eager and compiled alike."
    )
    passing = [r for r in rows if r.passes and not r.variant.startswith("friendly")]
    print(
        f"\nBar: >= {BAR_SPEEDUP}x and max abs diff <= {BAR_DIFF:g}. "
        + (f"{len(passing)} row(s) pass." if passing else "No row of the library as it is passes.")
    )


if __name__ == "__main__":
    main()
