"""docs/models.md is generated from the registry and kept current."""

from __future__ import annotations

from pathlib import Path

from anatomist.families.catalog import models_markdown
from anatomist.families.registry import FAMILIES

DOC = Path(__file__).resolve().parents[2] / "docs" / "models.md"
CASES = Path(__file__).resolve().parent / "cases"


def test_docs_models_md_is_current() -> None:
    assert DOC.read_text() == models_markdown(), (
        "docs/models.md is stale: run `python -m anatomist.families.catalog > docs/models.md`"
    )


def test_every_hugging_face_family_has_parity_cases() -> None:
    # Encoders and the classic checkpoint format are tested in their own files.
    own_tests = {"lens", "bert", "t5"}
    missing = [
        f.name
        for f in FAMILIES
        if f.name not in own_tests and not (CASES / f"{f.name}.py").exists()
    ]
    assert missing == []
