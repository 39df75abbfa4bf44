"""What wrapping a Hugging Face model in `HookedHFModel` costs: the same forward pass through
transformers alone and through the wrapper (no hooks; then caching every layer's resid_pre),
side by side in one process, called round-robin (best of `--repeats`).

    python -m benchmarks.hf_wrapper                          # SmolLM2-135M, 4 x 128 tokens
    python -m benchmarks.hf_wrapper --model PATH --batch 2 --pos 16

The two models are copies with the same weights: the wrapper's watchers stay on its own copy.
Prints the number of hook points and each time with its ratio to transformers'.
"""

from __future__ import annotations

import argparse
import copy

import torch

from anatomist.hf_model import HookedHFModel
from benchmarks.harness import interleaved

MODEL = "smollm2-135m-instruct"


def measure(model: str, batch: int, pos: int, repeats: int) -> dict[str, float]:
    """Seconds (best of `repeats`) of: transformers alone, the wrapper, the wrapper caching
    every resid_pre; and the wrapper's number of hook points."""
    wrapped = HookedHFModel.from_pretrained(model, dtype=torch.float32)
    raw = copy.deepcopy(wrapped.unwrap())  # a copy without the watchers
    wrapped.setup()  # the wrapper's own copy watched again
    high = min(wrapped.cfg.d_vocab, 40000)
    tokens = torch.randint(0, high, (batch, pos), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        times = interleaved(
            {
                "transformers": lambda: raw(tokens, use_cache=False),
                "wrapped": lambda: wrapped(tokens),
                "wrapped, caching resid_pre": lambda: wrapped.run_with_cache(
                    tokens, names_filter=lambda name: name.endswith("hook_resid_pre")
                ),
            },
            repeats,
        )
    return {**times, "hook points": float(len(wrapped.hook_dict))}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--pos", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)
    result = measure(args.model, args.batch, args.pos, args.repeats)
    points = int(result.pop("hook points"))
    base = result["transformers"]
    print(
        f"{args.model}: {points} hook points, {args.batch} x {args.pos} tokens, float32, "
        f"{torch.get_num_threads()} threads, best of {args.repeats}"
    )
    for name, seconds in result.items():
        print(f"  {name:28s} {seconds * 1e3:8.1f} ms  {seconds / base:.3f}x transformers")


if __name__ == "__main__":
    main()
