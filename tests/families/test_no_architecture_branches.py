"""Families describe differences as config options: model/ never names an architecture."""

from __future__ import annotations

import re
from pathlib import Path

from anatomist.families.registry import FAMILIES

MODEL_DIR = Path(__file__).resolve().parents[2] / "src" / "anatomist" / "model"


def test_model_code_never_checks_the_architecture() -> None:
    names = {arch for family in FAMILIES for arch in family.architectures}
    names |= {family.name for family in FAMILIES if len(family.name) > 3}
    source = "\n".join(p.read_text() for p in sorted(MODEL_DIR.glob("*.py")))
    code = "\n".join(line.split("#", 1)[0] for line in source.splitlines())  # not comments
    offenders = sorted(n for n in names if re.search(rf"[\"']{re.escape(n)}[\"']", code))
    assert offenders == [], f"model/ branches on architecture names: {offenders}"
    assert "original_architecture" not in code
