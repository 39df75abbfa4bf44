"""The `anatomist` command: `anatomist demo` and `anatomist inspect NAME`."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from typing import Any

import torch

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_REPORT = "anatomist-report.html"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="anatomist", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="next-token predictions, logit lens, induction heads")
    demo.add_argument("--model", default=DEFAULT_MODEL, help="name, alias, folder or .gguf file")
    demo.add_argument("--prompt", default="The capital of France is")
    demo.add_argument("--answer", default=" Paris", help="the token whose rank the lens tracks")
    demo.add_argument("--seq-len", type=int, default=40, help="length of each random repeat")
    demo.add_argument("--no-progress", action="store_true", help="hide progress bars")
    demo.add_argument(
        "--report", default=DEFAULT_REPORT, help="where to write the HTML report of the results"
    )
    demo.add_argument("--no-report", action="store_true", help="write no HTML report")

    inspect = commands.add_parser("inspect", help="print a model's config and hook points")
    inspect.add_argument("model")
    inspect.add_argument("--no-progress", action="store_true")

    grab = commands.add_parser(
        "harvest",
        help="write the activations of hooks over a corpus to a folder (resumable; torchrun)",
        description="Run a model over a corpus and write the activations of the given hooks "
        "to OUT as a datasets dataset in shards (docs/scale.md). Run the same command again to "
        "finish a killed run; under torchrun each rank writes its share of the shards.",
    )
    grab.add_argument("model", help="name, alias, folder or .gguf file")
    grab.add_argument("corpus", help="a saved dataset, a folder or file of .txt/.jsonl/.parquet")
    grab.add_argument("out", help="the output folder")
    grab.add_argument(
        "--hook",
        action="append",
        required=True,
        dest="hooks",
        help="a hook name (repeat for several)",
    )
    grab.add_argument("--context-length", type=int, default=128)
    grab.add_argument("--batch-size", type=int, default=8)
    grab.add_argument("--no-bos", action="store_true", help="rows without a BOS token")
    grab.add_argument("--positions", default="all", help="all, last, or START:STOP")
    grab.add_argument("--dtype", default=None, help="float32, float16 or float64")
    grab.add_argument("--rows-per-shard", type=int, default=1024)
    grab.add_argument("--max-rows", type=int, default=None)
    grab.add_argument("--max-tokens", type=int, default=None)
    grab.add_argument("--text-column", default="text")
    grab.add_argument("--quiet", action="store_true", help="no progress bars")

    args = parser.parse_args(argv)
    if args.command == "harvest":
        return run_harvest(args)
    with torch.no_grad():  # scoped: main() is also called in-process (tests, notebooks)
        if args.command == "demo":
            report = None if args.no_report else args.report
            run_demo(
                args.model, args.prompt, args.answer, args.seq_len, not args.no_progress, report
            )
        else:
            run_inspect(args.model, not args.no_progress)
    return 0


def run_harvest(args: argparse.Namespace) -> int:
    from anatomist.harvest import harvest

    positions: str | slice = args.positions
    if ":" in args.positions:
        start, stop = (int(part) if part else None for part in args.positions.split(":", 1))
        positions = slice(start, stop)
    out = harvest(
        args.model,
        args.corpus,
        args.hooks,
        args.out,
        context_length=args.context_length,
        batch_size=args.batch_size,
        prepend_bos=not args.no_bos,
        positions=positions,
        dtype=args.dtype,
        rows_per_shard=args.rows_per_shard,
        max_rows=args.max_rows,
        max_tokens=args.max_tokens,
        text_column=args.text_column,
        progress=not args.quiet,
    )
    print(f"Activations in {out} (datasets.load_from_disk or anatomist.harvest.ActivationDataset).")
    return 0


def _load(name: str, progress: bool, any_kind: bool = False):  # type: ignore[no-untyped-def]
    """Load `name` as a decoder-only model; with `any_kind`, encoders (BERT) and
    encoder-decoders (T5) load as HookedEncoder / HookedEncoderDecoder instead of failing."""
    from anatomist import HookedEncoder, HookedEncoderDecoder, HookedTransformer
    from anatomist.families.bert import EncoderOnlyError
    from anatomist.families.t5 import EncoderDecoderOnlyError

    start = time.perf_counter()
    try:
        model: Any = HookedTransformer.from_pretrained(name, progress=progress)
    except EncoderOnlyError:
        if not any_kind:
            raise
        model = HookedEncoder.from_pretrained(name, progress=progress)
    except EncoderDecoderOnlyError:
        if not any_kind:
            raise
        model = HookedEncoderDecoder.from_pretrained(name, progress=progress)
    cfg = model.cfg
    print(
        f"Loaded {cfg.model_name} as {type(model).__name__} in "
        f"{time.perf_counter() - start:.1f}s: {cfg.n_layers} layers, d_model {cfg.d_model}, "
        f"{cfg.n_heads} heads ({cfg.n_kv_heads} key/value), vocab {cfg.d_vocab}."
    )
    return model


def run_demo(
    name: str, prompt: str, answer: str, seq_len: int, progress: bool, report: str | None = None
) -> None:
    from anatomist.analysis.evals import induction_scores
    from anatomist.analysis.logit_lens import logit_lens_ranks, top_predictions

    model = _load(name, progress)

    print(f"\n1. Top next-token predictions for {prompt!r}")
    for token, prob in top_predictions(model, prompt, k=5):
        print(f"   {token!r:>16}  {prob:6.2%}")

    print(f"\n2. Logit lens: rank of {answer!r} after each layer (0 = top prediction)")
    ranks = logit_lens_ranks(model, prompt, answer)
    for label, rank in ranks:
        bar = "#" * max(0, 20 - min(20, rank.bit_length() * 2))
        print(f"   {label:>14}  rank {rank:>6}  {bar}")

    print(f"\n3. Induction heads on a random sequence of {seq_len} tokens, repeated once")
    result = induction_scores(model, seq_len=seq_len)
    top = result.top_heads(10)
    print("   strongest heads (score = attention to the token after the previous occurrence):")
    for layer, head, score in top:
        print(f"   {f'L{layer}H{head}':<7} {score:.3f}")
    print("   per head (rows: layers, columns: heads):")
    header = "".join(f"{h:>6}" for h in range(result.scores.shape[1]))
    print(f"         {header}")
    for layer, row in enumerate(result.scores.tolist()):
        print(f"   L{layer:<4} " + "".join(f"{s:6.2f}" for s in row))
    print(
        f"   mean loss per token: first repeat {result.loss_first:.3f}, "
        f"second repeat {result.loss_second:.3f} (lower = the model copies from context)"
    )
    if report is not None:
        from pathlib import Path

        from anatomist.viz import demo_report

        path = demo_report(model, prompt, answer, seq_len, induction=result).save(report)
        print(f"\nReport (open in a browser): {Path(path).resolve()}")


def run_inspect(name: str, progress: bool) -> None:
    model = _load(name, progress, any_kind=True)
    print(model.cfg)
    names = list(model.hook_dict)
    stacks = ("blocks.", "encoder.", "decoder.")  # every block of a stack has the same hooks
    shown = [
        n for n in names if not n.startswith(stacks) or any(n.startswith(f"{s}0.") for s in stacks)
    ]
    print(f"{len(names)} hook points; outside blocks and in block 0 (blocks 1.. alike):")
    for hook_name in shown:
        opt_in = model.hook_dict[hook_name].opt_in
        print(f"   {hook_name}" + (f"   (opt-in: cfg.{opt_in})" if opt_in else ""))


if __name__ == "__main__":
    sys.exit(main())
