"""docs/guide-grokking.md runs end to end, prints what it shows, and its claims hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.analysis.guides import run_guide

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide-grokking.md"


@pytest.mark.slow
def test_guide_groks_and_its_progress_measures_lead() -> None:
    pytest.importorskip("pandas")
    # Training is deterministic for a given thread count; the guide was run with two.
    namespace = run_guide(GUIDE, min_blocks=5, threads=2)
    table = namespace["table"].set_index("step")
    first = namespace["first"]
    assert first["train_acc"] <= 200 and first["test_acc"] >= 10 * first["train_acc"]
    assert table.loc[1000, "test_acc"] < 0.5 < table.loc[4000, "test_acc"]
    start, end, key = namespace["start"], namespace["end"], namespace["key"]
    assert end[key].sum() > 0.8 and end[key].sum() > 3 * start[key].sum()  # sparse spectrum
    # The restricted loss falls long before the test loss; the excluded loss rises meanwhile.
    assert table.loc[2000, "restricted_loss"] < table.loc[100, "restricted_loss"] / 100
    assert table.loc[2000, "restricted_loss"] < table.loc[2000, "test_loss"] / 100
    assert table.loc[2000, "excluded_loss"] > 10 * table.loc[100, "excluded_loss"]
    assert Path(namespace["path"]).is_file() and len(namespace["figures"].figures) == 3
