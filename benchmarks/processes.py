"""Sections that need a fresh interpreter each time: loading (wall time, peak RSS) and import.

Each measurement is its own subprocess, so its peak resident memory (``VmHWM``) is its own.
The libraries are imported before the clock starts: loading is timed, not importing. A process
that only imports them and reads the tokenizer gives the baseline that the memory target is
measured above (the weights are what the target is about).
The transformers rows load the tokenizer too, as anatomist's `from_pretrained` does.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from benchmarks.harness import Measurement
from benchmarks.subjects import ModelFolder

PROBE = """
import time, json, torch
torch.set_num_threads({threads})
import transformers, anatomist
{imports}
start = time.perf_counter()
{code}
seconds = time.perf_counter() - start
# VmHWM, the peak resident set of this process's own memory map (ru_maxrss would carry the
# parent's peak across fork + exec).
hwm = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
print(json.dumps({{"seconds": seconds, "peak_mb": int(hwm.split()[1]) / 1024}}))
"""


def _loaders(model: ModelFolder, dtype: str) -> list[tuple[str, str, str, str]]:
    """(library, source, imports, code) of each loader."""
    folder = str(model.path)
    tl = "from transformer_lens.model_bridge import TransformerBridge"
    loaders = [
        # Everything but the weights: imports, and the tokenizer every loader below reads too.
        ("baseline", "-", "", f"t = transformers.AutoTokenizer.from_pretrained({folder!r})"),
        (
            "anatomist",
            "safetensors",
            "",
            f"m = anatomist.HookedTransformer.from_pretrained_no_processing({folder!r}, "
            f"dtype=torch.{dtype}, progress=False)",
        ),
        (
            "anatomist processed",
            "safetensors",
            "",
            f"m = anatomist.HookedTransformer.from_pretrained({folder!r}, dtype=torch.{dtype}, "
            "progress=False)",
        ),
        (
            "HF",
            "safetensors",
            "",
            f"m = transformers.AutoModelForCausalLM.from_pretrained({folder!r}, "
            f"dtype=torch.{dtype}); t = transformers.AutoTokenizer.from_pretrained({folder!r})",
        ),
    ]
    if _installed("transformer_lens"):
        loaders.append(
            (
                "TL bridge",
                "safetensors",
                tl,
                f"m = TransformerBridge.boot_transformers({folder!r}, dtype=torch.{dtype})",
            )
        )
    if model.gguf is not None:
        gguf = str(model.gguf)
        loaders.append(
            (
                "anatomist",
                "gguf",
                "",
                f"m = anatomist.HookedTransformer.from_pretrained_no_processing({gguf!r}, "
                f"dtype=torch.{dtype}, progress=False)",
            )
        )
        loaders.append(
            (
                "HF",
                "gguf",
                "",
                f"m = transformers.AutoModelForCausalLM.from_pretrained({str(model.gguf.parent)!r}, "
                f"gguf_file={model.gguf.name!r}, dtype=torch.{dtype}); "
                f"t = transformers.AutoTokenizer.from_pretrained({str(model.gguf.parent)!r}, "
                f"gguf_file={model.gguf.name!r})",
            )
        )
    return loaders


def _installed(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def run_script(script: str) -> dict[str, float]:
    """Run `script` in a fresh Python (hub offline) and parse its last line as JSON."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"benchmark subprocess failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def run_loading(model: ModelFolder, repeats: int, dtype: str, threads: int) -> list[Measurement]:
    """Best wall time and median peak RSS of each loader over `repeats` fresh processes."""
    weights_mb = sum(f.stat().st_size for f in Path(model.path).glob("*.safetensors")) / 2**20
    if dtype in ("bfloat16", "float16"):
        weights_mb /= 2  # the folder holds float32
    rows = []
    for label, source, imports, code in _loaders(model, dtype):
        runs = [
            run_script(PROBE.format(threads=threads, imports=imports, code=code))
            for _ in range(repeats)
        ]
        seconds = min(r["seconds"] for r in runs)
        peak = statistics.median(r["peak_mb"] for r in runs)
        extra = {"peak_mb": peak, "weights_mb": weights_mb}
        rows.append(
            Measurement("load", f"load {source}", model.name, label, seconds, "s", repeats, extra)
        )
    return rows


IMPORT_PROBE = """
import time
start = time.perf_counter()
import torch
torch_s = time.perf_counter() - start
{extra}
print(torch_s, time.perf_counter() - start - torch_s)
"""


def run_import(repeats: int) -> list[Measurement]:
    """`import torch`, then how much `import anatomist` adds on top (fresh process each time)."""
    rows = []
    for label, extra in (
        ("anatomist", "import anatomist"),
        ("transformers", "import transformers"),
    ):
        torch_s, added = [], []
        for _ in range(repeats):
            done = subprocess.run(
                [sys.executable, "-c", IMPORT_PROBE.format(extra=extra)],
                capture_output=True,
                text=True,
                check=True,
            )
            a, b = map(float, done.stdout.split())
            torch_s.append(a)
            added.append(b)
        rows.append(
            Measurement(
                "import",
                "import on top of torch",
                "-",
                label,
                min(added),
                "s",
                repeats,
                {"torch_s": statistics.median(torch_s)},
            )
        )
    return rows
