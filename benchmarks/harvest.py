"""Harvest section: the activations of 3 hooks over a corpus, written to disk.

anatomist.harvest against the loop a careful researcher writes by hand (transformers' decoder
without the LM head, a forward hook per layer, one safetensors file per batch) and against nnsight saving the same activations, on the
same rows (``tokenize_and_concatenate``'s packing, 128 tokens) and the same layers (SmolLM2's
blocks 9, 19 and 29: the whole model runs in every library). Each run is its own process, so its
peak resident memory (``VmHWM``) is its own; the clock starts after the model is loaded and
covers tokenizing, the forwards and the writing. Run at N and 2N tokens: the peak must not grow
with the corpus. Also anatomist under ``torchrun`` with 2 ranks of 1 thread each against 1
process of 2 threads (on 2 cores no speed-up is expected).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Callable
from pathlib import Path

from benchmarks.harness import Measurement
from benchmarks.subjects import ModelFolder

LAYERS = (9, 19, 29)
CONTEXT = 128
BATCH = 8

PROBE = """
import json, sys, time, os
import torch
torch.set_num_threads({threads})
sys.path.insert(0, {repo!r})
from benchmarks.harvest import corpus_texts, {runner}
texts = corpus_texts({chars})
seconds, tokens = {runner}({folder!r}, texts, {out!r}, {max_tokens})
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
rank = int(os.environ.get("RANK", "0"))
with open(f"{results}.{{rank}}.json", "w") as handle:  # one file per rank: no mixed lines
    json.dump({{"seconds": seconds, "tokens": tokens,
               "peak_mb": int(hwm.split()[1]) / 1024, "rank": rank}}, handle)
"""


def corpus_texts(chars: int) -> list[str]:
    """Offline text: the standard library's Python sources in sorted order, up to `chars`
    characters (about 3.5 characters per SmolLM2 token)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    texts: list[str] = []
    total = 0
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        texts.append(text)
        total += len(text)
        if total >= chars:
            break
    return texts


def _rows(tokenizer: object, texts: list[str], max_tokens: int):  # type: ignore[no-untyped-def]
    from anatomist.utils import tokenize_and_concatenate

    rows = tokenize_and_concatenate(texts, tokenizer, max_length=CONTEXT)["tokens"]
    return rows[: max_tokens // CONTEXT]


def run_anatomist(folder: str, texts: list[str], out: str, max_tokens: int) -> tuple[float, int]:
    import time

    import anatomist
    from anatomist.harvest import ActivationDataset, harvest

    model = anatomist.HookedTransformer.from_pretrained_no_processing(folder, progress=False)
    hooks = [f"blocks.{layer}.hook_resid_post" for layer in LAYERS]
    start = time.perf_counter()
    harvest(model, texts, hooks, out, context_length=CONTEXT, batch_size=BATCH,
            max_tokens=max_tokens, progress=False)  # fmt: skip
    seconds = time.perf_counter() - start
    return seconds, ActivationDataset(out).manifest["tokens"]


def run_hand_loop(folder: str, texts: list[str], out: str, max_tokens: int) -> tuple[float, int]:
    import time

    import torch
    import transformers
    from safetensors.torch import save_file

    model = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    saved: dict[str, torch.Tensor] = {}
    for layer in LAYERS:
        model.model.layers[layer].register_forward_hook(
            lambda module, args, output, layer=layer: saved.__setitem__(
                f"layer{layer}", (output[0] if isinstance(output, tuple) else output).detach()
            )
        )
    start = time.perf_counter()
    rows = _rows(tokenizer, texts, max_tokens)
    os.makedirs(out, exist_ok=True)
    with torch.inference_mode():
        for index in range(0, rows.shape[0], BATCH):
            model.model(rows[index : index + BATCH])  # the decoder: no logits are needed
            save_file(
                {k: v.contiguous() for k, v in saved.items()}, f"{out}/{index:06d}.safetensors"
            )
    return time.perf_counter() - start, rows.numel()


def run_nnsight(folder: str, texts: list[str], out: str, max_tokens: int) -> tuple[float, int]:
    import time

    import torch
    import transformers
    from nnsight import LanguageModel
    from safetensors.torch import save_file

    hf = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
    model = LanguageModel(hf, tokenizer=tokenizer)
    start = time.perf_counter()
    rows = _rows(tokenizer, texts, max_tokens)
    os.makedirs(out, exist_ok=True)
    with torch.inference_mode():
        for index in range(0, rows.shape[0], BATCH):
            saved: list[torch.Tensor] = []  # must exist before the block (nnsight_jobs.py)
            with model.trace(rows[index : index + BATCH]):
                for layer in LAYERS:
                    saved.append(model.model.layers[layer].output.save())
            values = {
                f"layer{layer}": (out[0] if isinstance(out, tuple) else out).contiguous()
                for layer, out in zip(LAYERS, saved, strict=True)
            }
            save_file(values, f"{out}/{index:06d}.safetensors")
    return time.perf_counter() - start, rows.numel()


def _probe(
    model: ModelFolder, runner: str, max_tokens: int, threads: int, ranks: int = 1
) -> list[dict[str, float]]:
    repo = str(Path(__file__).resolve().parents[1])
    with tempfile.TemporaryDirectory(prefix="anatomist-harvest-bench-") as scratch:
        code = PROBE.format(
            threads=threads, repo=repo, runner=runner, chars=max_tokens * 5,
            folder=str(model.path), out=f"{scratch}/out", max_tokens=max_tokens,
            results=f"{scratch}/result",
        )  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        if ranks == 1:
            command = [sys.executable, "-c", code]
        else:
            script = Path(scratch, "probe.py")
            script.write_text(code)
            command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                       f"--nproc_per_node={ranks}", str(script)]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{runner} failed:\n{done.stderr[-3000:]}")
        return [
            json.loads(Path(scratch, f"result.{rank}.json").read_text()) for rank in range(ranks)
        ]


def run_harvest_section(
    model: ModelFolder, tokens: int, threads: int, log: Callable[[str], None], nnsight: bool
) -> list[Measurement]:
    """Rows: tokens/s and peak RSS per library at `tokens` (and the peak at half of it)."""
    rows: list[Measurement] = []
    runners = [("anatomist", "run_anatomist"), ("HF hand loop", "run_hand_loop")]
    if nnsight:
        runners.append(("nnsight", "run_nnsight"))
    for library, runner in runners:
        peaks = {}
        for size in (tokens // 2, tokens):
            log(f"    harvest {library}: {size} tokens")
            (result,) = _probe(model, runner, size, threads)
            peaks[size] = result["peak_mb"]
        rate = result["tokens"] / result["seconds"]
        extra = {
            "tokens": float(result["tokens"]),
            "peak_mb": peaks[tokens],
            "peak_mb_half": peaks[tokens // 2],
        }
        rows.append(Measurement("harvest", f"harvest {tokens} tokens, 3 hooks", model.name,
                                library, rate, "tokens/s", 1, extra))  # fmt: skip
    log(f"    harvest anatomist: 2 ranks x 1 thread, {tokens} tokens")
    results = _probe(model, "run_anatomist", tokens, 1, ranks=2)
    slowest = max(r["seconds"] for r in results)
    extra = {"tokens": results[0]["tokens"], "peak_mb": max(r["peak_mb"] for r in results)}
    rows.append(Measurement("harvest", f"harvest {tokens} tokens, 3 hooks", model.name,
                            "anatomist 2 ranks x 1 thread", results[0]["tokens"] / slowest,
                            "tokens/s", 1, extra))  # fmt: skip
    return rows
