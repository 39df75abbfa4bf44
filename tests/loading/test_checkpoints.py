"""Training checkpoints map to the revisions their suites publish."""

from __future__ import annotations

import pytest

import anatomist
from anatomist.loading.checkpoints import PYTHIA, STANFORD_CRFM, checkpoint_revision


def test_schedules_have_the_published_counts() -> None:
    assert len(PYTHIA.steps) == 154 and PYTHIA.steps[:4] == (0, 1, 2, 4)
    assert PYTHIA.steps[-1] == 143000
    assert len(STANFORD_CRFM.steps) == 609 and STANFORD_CRFM.steps[-1] == 400000


def test_index_and_value() -> None:
    assert checkpoint_revision("EleutherAI/pythia-70m", checkpoint_index=0) == "step0"
    assert checkpoint_revision("EleutherAI/pythia-70m", checkpoint_index=-1) == "step143000"
    assert checkpoint_revision("EleutherAI/pythia-70m", checkpoint_value=512) == "step512"
    assert checkpoint_revision("stanford-crfm/alias-gpt2-small-x21", checkpoint_index=10) == (
        "checkpoint-100"
    )


def test_bad_requests_say_why() -> None:
    with pytest.raises(ValueError, match="nearest: 1000, 2000"):
        checkpoint_revision("EleutherAI/pythia-70m", checkpoint_value=1500)
    with pytest.raises(ValueError, match="154 checkpoints"):
        checkpoint_revision("EleutherAI/pythia-70m", checkpoint_index=154)
    with pytest.raises(ValueError, match="no training checkpoints"):
        checkpoint_revision("gpt2", checkpoint_index=3)


def test_from_pretrained_asks_for_that_revision(monkeypatch: pytest.MonkeyPatch) -> None:
    import anatomist.loading.resolve as resolve

    asked: dict[str, object] = {}

    def fake_resolve(name: str, **kwargs: object) -> None:
        asked.update(kwargs, name=name)
        raise anatomist.UnknownModelError("stop here")

    monkeypatch.setattr(resolve, "resolve_checkpoint", fake_resolve)
    with pytest.raises(anatomist.UnknownModelError):
        anatomist.HookedTransformer.from_pretrained(
            "pythia-70m", checkpoint_value=3000, progress=False
        )
    assert asked["name"] == "pythia-70m" and asked["revision"] == "step3000"
