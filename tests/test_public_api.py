"""The names and module paths code written for the classic library imports."""

from __future__ import annotations

import importlib

import pytest

import anatomist


@pytest.mark.parametrize(
    ("module", "attribute"),
    [
        ("anatomist.patching", "generic_activation_patch"),
        ("anatomist.evals", "induction_loss"),
        ("anatomist.head_detector", "detect_head"),
        ("anatomist.utils", "get_act_name"),
    ],
)
def test_classic_module_paths_import(module: str, attribute: str) -> None:
    imported = importlib.import_module(module)
    assert callable(getattr(imported, attribute))
    assert getattr(anatomist, module.rsplit(".", 1)[-1]) is imported


def test_public_names_exist() -> None:
    for name in anatomist.__all__:
        assert getattr(anatomist, name) is not None
    for name in ("HookedTransformer", "HookedEncoder", "HookedEncoderDecoder", "FactoredMatrix"):
        assert name in anatomist.__all__
