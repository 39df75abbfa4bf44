"""docs/guide-induction.md runs end to end, prints what it shows, and its claims hold."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.analysis.guides import run_guide

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide-induction.md"


@pytest.mark.slow
def test_guide_induction_heads_form_with_the_in_context_loss() -> None:
    pytest.importorskip("pandas")
    # Training is deterministic for a given thread count; the guide was run with two.
    namespace = run_guide(GUIDE, min_blocks=7, threads=2)
    table = namespace["table"].set_index("step")
    # Before the change: no induction head, late tokens no easier than early ones.
    assert table.loc[500, "induction"] < 0.1 and abs(table.loc[500, "in_context"]) < 0.1
    # After it: a strong induction head in layer 1 (never layer 0) and late tokens much easier.
    assert table.loc[2500, "induction"] > 0.5 and table.loc[2500, "in_context"] < -0.5
    assert namespace["best"].startswith("L1")
    assert max(table.loc[2500, f"L0H{h}"] for h in range(4)) < 0.1
    # The previous-token head forms first: strong while the induction score is still low.
    assert table.loc[1000, "previous_token"] > 4 * table.loc[1000, "induction"]
    # Both change fastest within the same few hundred steps, and the loss bends there.
    assert abs(namespace["jump"] - namespace["drop"]) <= 200
    loss = table["loss"]
    during = (loss[1200] - loss[2000]) / 8
    assert during > 1.5 * (loss[500] - loss[1200]) / 7
    assert during > 2 * (loss[2000] - loss[2500]) / 5
    assert Path(namespace["path"]).is_file() and len(namespace["figures"].figures) == 3
