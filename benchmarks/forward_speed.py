"""Forward-pass speed, anatomist vs Hugging Face, side by side in one run.

Builds a random-init Llama with SmolLM2-135M's shape (30 layers, d_model 576, 9 heads / 3 KV
heads), saves it, loads it both ways and times interleaved forwards without hooks, then with
run_with_cache over everything. Prints ratios (anatomist time / HF time); lower is better.

    .venv/bin/python benchmarks/forward_speed.py [--layers 30] [--repeats 10]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable

import torch
import transformers

import anatomist


def timed(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=args.layers,
        num_attention_heads=9,
        num_key_value_heads=3,
        vocab_size=49152,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        rope_theta=100000.0,
    )
    hf = transformers.LlamaForCausalLM(config).eval()
    with tempfile.TemporaryDirectory() as folder:
        hf.save_pretrained(folder)
        ours = anatomist.HookedTransformer.from_pretrained_no_processing(folder, progress=False)
    print(
        f"torch {torch.__version__}, transformers {transformers.__version__}, "
        f"threads {torch.get_num_threads()}, attn {hf.config._attn_implementation}"
    )
    print(f"{'case':<28}{'HF ms':>10}{'anatomist ms':>14}{'ratio':>8}")
    with torch.inference_mode():
        for batch, pos in ((1, 16), (1, 128), (4, 256)):
            tokens = torch.randint(0, config.vocab_size, (batch, pos))
            hf_times, our_times = [], []
            for _ in range(2):  # interleave to share the machine's noise fairly
                hf_times += timed(lambda t=tokens: hf(t).logits, args.repeats // 2)
                our_times += timed(lambda t=tokens: ours(t), args.repeats // 2)
            h, o = statistics.median(hf_times), statistics.median(our_times)
            print(f"{f'forward {batch}x{pos}':<28}{h * 1e3:>10.1f}{o * 1e3:>14.1f}{o / h:>8.2f}")
        tokens = torch.randint(0, config.vocab_size, (1, 128))
        h = statistics.median(timed(lambda: hf(tokens, output_hidden_states=True), args.repeats))
        o = statistics.median(timed(lambda: ours.run_with_cache(tokens), args.repeats))
        print(f"{'cache all 1x128 (vs hidden)':<28}{h * 1e3:>10.1f}{o * 1e3:>14.1f}{o / h:>8.2f}")


if __name__ == "__main__":
    main()
