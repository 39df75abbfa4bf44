"""The split-model check for a machine with a GPU (a few minutes): SmolLM2-135M with half its
blocks on the GPU and half (with the unembedding) on the CPU, against the same model on the GPU
alone, in float32:

- logits within 1e-5, greedy generation with the KV cache token-identical, run_with_cache
  equal within 1e-5 on every block's resid_post, a resid_pre patching sweep within 1e-5;
- the load: peak GPU memory while loading vs the bytes the plan puts on the GPU (the weights
  go straight to their device, so the peak should be the plan plus rotary buffers);
- with two or more GPUs also device_map="balanced" over all of them, the same checks and the
  peak of each GPU vs its plan.

    python -m benchmarks.gpu_split                   # on the GPU machine (benchmarks/gpu.sh runs it)
    python -m benchmarks.gpu_split --device cpu      # the CPU smoke run: "cpu" + "cpu:0"

Prints a table; writes ``--out`` (JSON) when given; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from anatomist import HookedTransformer
from anatomist.analysis.patching import get_act_patch_resid_pre
from anatomist.model.devices import model_parts

MODEL = "smollm2-135m-instruct"
PROMPT = "When Mary and John went to the store, John gave a drink to"
CORRUPTED = "When Mary and John went to the store, Mary gave a drink to"
TOLERANCE = 1e-5


def load(**kwargs: Any) -> HookedTransformer:
    return HookedTransformer.from_pretrained(MODEL, dtype=torch.float32, progress=False, **kwargs)


def outputs(model: HookedTransformer) -> dict[str, Any]:
    """Everything compared between the whole and the split model, gathered on the CPU."""
    tokens = model.to_tokens(PROMPT)
    corrupted = model.to_tokens(CORRUPTED)
    answer, wrong = model.to_single_token(" Mary"), model.to_single_token(" John")
    with torch.no_grad():
        logits, cache = model.run_with_cache(
            tokens, names_filter=lambda name: name.endswith("hook_resid_post")
        )
        generated = model.generate(tokens, max_new_tokens=24, do_sample=False, verbose=False)

        def metric(patched: torch.Tensor) -> torch.Tensor:
            return patched[0, -1, answer] - patched[0, -1, wrong]

        sweep = get_act_patch_resid_pre(model, corrupted, cache_for(model, tokens), metric)
    return {
        "logits": logits.cpu(),
        "cache": {name: value.cpu() for name, value in cache.items()},
        "generated": generated.cpu(),
        "sweep": sweep.cpu(),
    }


def cache_for(model: HookedTransformer, tokens: torch.Tensor) -> Any:
    _, cache = model.run_with_cache(tokens)
    return cache


def compare(whole: dict[str, Any], split: dict[str, Any]) -> dict[str, Any]:
    cache_diff = max(
        (split["cache"][name] - value).abs().max().item() for name, value in whole["cache"].items()
    )
    return {
        "logits max |diff|": (split["logits"] - whole["logits"]).abs().max().item(),
        "cache max |diff|": cache_diff,
        "patching max |diff|": (split["sweep"] - whole["sweep"]).abs().max().item(),
        "generate identical": bool(torch.equal(split["generated"], whole["generated"])),
    }


def passed(result: dict[str, Any]) -> bool:
    return result["generate identical"] and all(
        value <= TOLERANCE for key, value in result.items() if key.endswith("|diff|")
    )


def planned_bytes(model: HookedTransformer) -> dict[str, int]:
    """Bytes of weights and buffers the model's device map puts on each device."""
    held: dict[str, int] = {}
    assert model.device_map is not None
    for part, module in model_parts(model):
        device = model.device_map[part]
        tensors = [*module.parameters(), *module.buffers()]
        held[device] = held.get(device, 0) + sum(t.numel() * t.element_size() for t in tensors)
    return held


def split_load(device_map: Any, gpus: list[int]) -> tuple[HookedTransformer, dict[str, Any]]:
    for index in gpus:
        torch.cuda.reset_peak_memory_stats(index)
    before = {index: torch.cuda.memory_allocated(index) for index in gpus}
    start = time.perf_counter()
    model = load(device_map=device_map)
    seconds = time.perf_counter() - start
    plan = planned_bytes(model)
    peaks = {
        f"cuda:{index}": torch.cuda.max_memory_allocated(index) - before[index] for index in gpus
    }
    report = {
        "device_map": model.device_map,
        "load seconds": round(seconds, 2),
        "planned MiB": {d: round(b / 2**20, 1) for d, b in plan.items()},
        "peak MiB": {d: round(b / 2**20, 1) for d, b in peaks.items()},
        "peak / plan": {d: round(peaks[d] / plan[d], 3) for d in peaks if plan.get(d)},
    }
    return model, report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda:0", help="the GPU (or 'cpu' for a smoke run)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    gpus = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
    results: dict[str, Any] = {"model": MODEL, "device": str(device)}
    if gpus:
        results["gpu"] = torch.cuda.get_device_name(device.index or 0)

    whole = load(device=device)
    reference = outputs(whole)
    half = whole.cfg.n_layers // 2
    del whole
    if gpus:
        torch.cuda.empty_cache()

    second = "cpu" if device.type == "cuda" else "cpu:0"
    device_map = {"": str(device), "blocks": second, "ln_final": second, "unembed": second}
    device_map.update({f"blocks.{i}": str(device) for i in range(half)})
    checks = {}
    split, report = split_load(device_map, [device.index or 0] if gpus else [])
    report.update(compare(reference, outputs(split)))
    checks[f"half {device} / half {second}"] = report
    del split
    if len(gpus) > 1:
        torch.cuda.empty_cache()
        balanced, report = split_load("balanced", gpus)
        report.update(compare(reference, outputs(balanced)))
        checks[f"balanced over {len(gpus)} GPUs"] = report
        del balanced
    results["checks"] = checks

    ok = True
    for label, report in checks.items():
        verdict = "ok" if passed(report) else "FAILED"
        ok = ok and passed(report)
        print(f"\n## {label}: {verdict}")
        for key, value in report.items():
            print(f"- {key}: {value}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2, default=str)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
