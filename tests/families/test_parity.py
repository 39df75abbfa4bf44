"""Every family's cases (tests/families/cases/*.py) against Hugging Face."""

from __future__ import annotations

import importlib
import pkgutil
from pathlib import Path
from typing import Any

import pytest

from tests.families import cases as cases_package
from tests.families.parity import (
    Case,
    build,
    check_hidden_states,
    check_invariants,
    check_kv_cache,
    check_logits,
    check_padded_batch,
    check_processed_log_probs,
)


def _all_cases() -> dict[str, Case]:
    found: dict[str, Case] = {}
    for info in pkgutil.iter_modules(cases_package.__path__):
        module = importlib.import_module(f"{cases_package.__name__}.{info.name}")
        for name, case in module.CASES.items():
            found[f"{info.name}:{name}"] = case
    return found


CASES = _all_cases()


@pytest.fixture(scope="module", params=sorted(CASES))
def built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Any, Path, Case]:
    case = CASES[request.param]
    folder = tmp_path_factory.mktemp(request.param.replace(":", "-"))
    return build(case, folder), folder, case


def test_logits_match_unprocessed(built: tuple[Any, Path, Case]) -> None:
    check_logits(*built)


def test_log_probs_match_processed(built: tuple[Any, Path, Case]) -> None:
    check_processed_log_probs(*built)


def test_resid_post_matches_hidden_states(built: tuple[Any, Path, Case]) -> None:
    check_hidden_states(*built)


@pytest.mark.parametrize("side", ["left", "right"])
def test_padded_batch_matches_rows_alone(built: tuple[Any, Path, Case], side: str) -> None:
    check_padded_batch(*built, side)


def test_invariants_and_each_hook_fires_once(built: tuple[Any, Path, Case]) -> None:
    _, folder, case = built
    check_invariants(folder, case)


def test_kv_cache_matches_full_forward(built: tuple[Any, Path, Case]) -> None:
    check_kv_cache(*built)
