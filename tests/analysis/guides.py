"""Run a markdown guide's python blocks in order and check each block's printed output against
the ``text`` block the guide shows after it (decimals within rounding)."""

from __future__ import annotations

import contextlib
import io
import re
from pathlib import Path
from typing import Any

import torch

# A code block, optionally followed by the output the guide shows for it.
BLOCK = re.compile(r"```python\n(.*?)```\s*(?:```text\n(.*?)```)?", flags=re.S)
DECIMAL = re.compile(r"(?<![\w.])-?\d+\.\d+(?:e[-+]?\d+)?")


def _masked(output: str, any_order: bool) -> list[str]:
    lines = [DECIMAL.sub("#", line) for line in output.strip().splitlines()]
    return sorted(lines) if any_order else lines


def _decimals_agree(shown: str, printed: str) -> bool:
    """Decimals within rounding of each other; float-error sizes (``-6.5e-07``) both tiny."""
    pairs = zip(DECIMAL.findall(shown), DECIMAL.findall(printed), strict=True)
    return all(
        (abs(float(a)) <= 1e-4 and abs(float(b)) <= 1e-4)
        if "e" in a
        else abs(float(a) - float(b)) <= 0.02
        for a, b in pairs
    )


def run_guide(
    guide: Path, min_blocks: int, any_order: bool = False, threads: int | None = None
) -> dict[str, Any]:
    """The namespace after running every block of `guide`, each shown output checked.

    `any_order`: compare the printed lines as a set (a singular vector's two ends may come out
    in either order on another machine). `threads`: torch's thread count while it runs."""
    blocks = BLOCK.findall(guide.read_text())
    assert len(blocks) >= min_blocks, "the guide lost its code blocks"
    namespace: dict[str, Any] = {}
    grad, saved_threads = torch.is_grad_enabled(), torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        for code, shown in blocks:
            printed = io.StringIO()
            with contextlib.redirect_stdout(printed):
                exec(compile(code, str(guide), "exec"), namespace)
            if shown:
                out = printed.getvalue()
                assert _masked(out, any_order) == _masked(shown, any_order), out
                assert _decimals_agree(shown, out), out
    finally:  # a guide turns gradients off for itself
        torch.set_grad_enabled(grad)
        torch.set_num_threads(saved_threads)
    return namespace
