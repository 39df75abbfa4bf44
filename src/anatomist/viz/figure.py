"""What every picture shares: the `HTMLFigure` it returns, input checks, colour scales, escaping.

A figure is a fragment of self-contained HTML (inline SVG, CSS and vanilla JS; nothing is loaded
from the network) whose element ids are unique, so several figures can share one notebook or
one page. Every string that came from a tokenizer or a caller goes through `escape` (tokens such
as ``<script>`` or ``"&`` are text, never markup).
"""

from __future__ import annotations

import html as _html
import itertools
import json
import math
import secrets
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

# (position in [0, 1], (r, g, b)): ColorBrewer's RdBu (red negative, white zero, blue positive,
# the field's usual patching colours) and Blues for values that are never negative.
DIVERGING = [
    (0.0, (103, 0, 31)),
    (0.15, (178, 24, 43)),
    (0.3, (214, 96, 77)),
    (0.42, (244, 165, 130)),
    (0.5, (247, 247, 247)),
    (0.58, (146, 197, 222)),
    (0.7, (67, 147, 195)),
    (0.85, (33, 102, 172)),
    (1.0, (5, 48, 97)),
]
SEQUENTIAL = [
    (0.0, (255, 255, 255)),
    (0.25, (198, 219, 239)),
    (0.5, (107, 174, 214)),
    (0.75, (33, 113, 181)),
    (1.0, (8, 48, 107)),
]

_counter = itertools.count()
_SESSION = secrets.token_hex(3)  # ids stay unique across kernels' outputs in one saved notebook


def new_id(kind: str) -> str:
    """An element id no other figure has: ``anat-{kind}-{session}-{n}``."""
    return f"anat-{kind}-{_SESSION}-{next(_counter)}"


def escape(text: Any) -> str:
    """`text` as HTML text or attribute value (quotes escaped too)."""
    return _html.escape(str(text), quote=True)


def show_token(token: str) -> str:
    """A token as the reader should see it: newlines and tabs made visible (not escaped yet)."""
    return token.replace("\n", "\u21b5").replace("\t", "\u2192").replace("\r", "\\r")


def json_for_script(data: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``</script>`` or
    ``<!--`` can end the element early (``<`` only occurs inside strings, as ``\\u003c``)."""
    return json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")


def to_array(values: Any, name: str) -> np.ndarray:
    """A torch tensor, numpy array or (nested) list as a float64 numpy array."""
    if hasattr(values, "detach"):  # torch.Tensor, without importing torch here
        values = values.detach().float().cpu().numpy()
    try:
        array = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numbers (a tensor, array or list): {error}") from None
    return array


def check_labels(labels: Any, name: str, length: int, axis: str) -> list[str]:
    """`labels` as strings, checked to be `length` long (the size of `axis`)."""
    if isinstance(labels, str) or not isinstance(labels, Sequence):
        labels = list(labels)
    if len(labels) != length:
        raise ValueError(f"{name} has {len(labels)} labels but {axis} has {length}.")
    return [str(label) for label in labels]


def color(t: float, scale: list[tuple[float, tuple[int, int, int]]]) -> str:
    """The colour at `t` in [0, 1] (clipped; NaN is grey) on `scale`, as ``rgb(r,g,b)``."""
    if not math.isfinite(t):
        return "rgb(200,200,200)"
    t = min(1.0, max(0.0, t))
    for (t0, c0), (t1, c1) in itertools.pairwise(scale):
        if t <= t1:
            f = (t - t0) / (t1 - t0)
            r, g, b = (round(a + (b_ - a) * f) for a, b_ in zip(c0, c1))
            return f"rgb({r},{g},{b})"
    r, g, b = scale[-1][1]
    return f"rgb({r},{g},{b})"


def text_color(t: float, scale: list[tuple[float, tuple[int, int, int]]]) -> str:
    """Black or white, whichever reads better on ``color(t, scale)``."""
    if not math.isfinite(t):
        return "#000"
    r, g, b = (int(c) for c in color(t, scale)[4:-1].split(","))
    return "#000" if 0.299 * r + 0.587 * g + 0.114 * b > 140 else "#fff"


def diverging_position(value: float, limit: float) -> float:
    """Where `value` sits on a diverging scale centred at zero that spans ``[-limit, limit]``."""
    return 0.5 + 0.5 * value / limit if limit > 0 else 0.5


def symmetric_limit(values: np.ndarray) -> float:
    """The largest finite ``|value|`` (1.0 when there is none), the diverging scale's end."""
    finite = np.abs(values[np.isfinite(values)])
    return float(finite.max()) if finite.size and finite.max() > 0 else 1.0


def fmt(value: float) -> str:
    """A short number for a cell or a tooltip."""
    if not math.isfinite(value):
        return str(value)
    if value == 0:
        return "0"
    if abs(value) >= 1000 or abs(value) < 0.01:
        return f"{value:.2e}"
    return f"{value:.3g}" if abs(value) >= 1 else f"{value:.2f}"


def cell_fmt(value: float) -> str:
    """A number short enough for a heatmap cell: two decimals below 100."""
    if math.isfinite(value) and abs(value) < 100:
        return f"{value:.2f}".replace("-0.00", "0.00")
    return fmt(value)


STYLE = """
.anat-fig{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;font-size:13px;color:#222;
 margin:8px 0;max-width:100%;overflow-x:auto}
.anat-fig .anat-title{font-weight:600;margin:0 0 6px 0}
.anat-fig svg text{font-family:ui-monospace,'SFMono-Regular',Menlo,monospace;font-size:11px}
.anat-fig .anat-tok{font-family:ui-monospace,'SFMono-Regular',Menlo,monospace;white-space:pre;
 border:1px solid #ddd;border-radius:3px;padding:0 2px;margin:1px;display:inline-block;
 line-height:18px}
.anat-fig .anat-tokens{line-height:22px;max-width:1100px}
.anat-fig .anat-heads label{margin-right:8px;white-space:nowrap;cursor:pointer}
.anat-fig .anat-panels{display:flex;flex-wrap:wrap;gap:14px;align-items:flex-start}
.anat-fig .anat-panel .anat-head-name{font-weight:600;text-align:center}
.anat-fig .anat-info{font-family:ui-monospace,monospace;min-height:18px;color:#444}
.anat-fig.anat-hovering .anat-cell{opacity:.3}
.anat-fig.anat-hovering .anat-cell.anat-hl{opacity:1;stroke:#000;stroke-width:.6}
.anat-fig .anat-tok.anat-hl-tok{outline:2px solid #000}
.anat-fig .anat-band{fill:#ffd54f;opacity:.35;pointer-events:none}
"""


def style_tag() -> str:
    return f"<style>{STYLE}</style>"


class HTMLFigure:
    """A picture as self-contained HTML: shows itself inline in Jupyter (`_repr_html_`), gives
    its markup as `.html` (a fragment, to embed in a page) and writes a standalone page with
    `.save(path)`."""

    def __init__(self, html: str, title: str, kind: str) -> None:
        self.html = html  # the fragment: a <div class="anat-fig"> with its style and script
        self.title = title
        self.kind = kind  # which function made it: "heatmap", "attention_patterns", ...

    def _repr_html_(self) -> str:
        return self.html

    def page(self) -> str:
        """A standalone HTML page holding only this figure."""
        return standalone_page(self.title, self.html)

    def save(self, path: str | Path) -> Path:
        """Write the standalone page to `path` (exactly that file) and return it."""
        path = Path(path)
        path.write_text(self.page(), encoding="utf-8")
        return path

    def __repr__(self) -> str:
        return f"<HTMLFigure {self.kind}: {self.title!r}, {len(self.html)} characters of HTML>"

    __str__ = __repr__


def standalone_page(title: str, body: str) -> str:
    # The CSP forbids every network fetch: the page can only use what is inline in it.
    return (
        "<!doctype html>\n<html lang='en'><head><meta charset='utf-8'>"
        "<meta http-equiv='Content-Security-Policy' content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; script-src 'unsafe-inline'; img-src data:\">"
        f"<title>{escape(title)}</title></head>\n<body style='margin:16px'>\n{body}\n"
        "</body></html>\n"
    )


def figure_div(fid: str, title: str | None, inner: str, extra_class: str = "") -> str:
    heading = f"<div class='anat-title'>{escape(title)}</div>" if title else ""
    return (
        f"<div class='anat-fig {extra_class}' id='{fid}'>{style_tag()}{heading}{inner}</div>"
    ).replace("class='anat-fig '", "class='anat-fig'")
