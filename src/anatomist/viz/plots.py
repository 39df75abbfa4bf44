"""Static pictures: `heatmap` (patching results, score grids), `bar` (direct logit attribution by
component), `token_values` (text coloured by a value per token) and `line` (metrics over
training steps). Plain SVG and CSS, with a
``<title>`` tooltip on every cell, bar and token; no script needed."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from anatomist.viz.figure import (
    DIVERGING,
    SEQUENTIAL,
    HTMLFigure,
    cell_fmt,
    check_labels,
    color,
    escape,
    figure_div,
    fmt,
    new_id,
    show_token,
    symmetric_limit,
    text_color,
    to_array,
)

CHAR_PX = 6.7  # width of one 11px monospace character
SCALES = {"diverging": DIVERGING, "sequential": SEQUENTIAL}


def _short(label: str, limit: int = 28) -> str:
    label = show_token(label)
    return label if len(label) <= limit else label[: limit - 1] + "\u2026"


def _scale_positions(
    values: np.ndarray, scale: str, vmin: float | None, vmax: float | None
) -> tuple[Callable[[float], float], float, float]:
    """A map value -> position on the colour scale, and the scale's two ends."""
    if scale not in SCALES:
        raise ValueError(f"scale must be 'diverging' or 'sequential', got {scale!r}.")
    finite = values[np.isfinite(values)]
    if scale == "diverging":  # centred at zero, symmetric unless both ends are given
        limit = symmetric_limit(values)
        low = -limit if vmin is None else vmin
        high = limit if vmax is None else vmax
        if not low < 0 < high:
            raise ValueError(f"a diverging scale needs vmin < 0 < vmax, got {low} and {high}.")
        return (lambda v: 0.5 + 0.5 * v / high if v >= 0 else 0.5 - 0.5 * v / low), low, high
    low = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    high = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    span = high - low if high > low else 1.0
    return (lambda v: (v - low) / span), low, high


def heatmap_svg(
    values: np.ndarray,
    x_labels: Sequence[str],
    y_labels: Sequence[str],
    position: Callable[[float], float],
    scale: list[tuple[float, tuple[int, int, int]]],
    ends: tuple[float, float],
    *,
    tooltips: Sequence[Sequence[str]] | None = None,
    cell_text: Sequence[Sequence[str]] | None = None,
    x_title: str | None = None,
    y_title: str | None = None,
    colorbar_label: str = "",
    tick_text: Callable[[float], str] = fmt,
) -> str:
    """An SVG heatmap: rows `y_labels` top to bottom, columns `x_labels`, colour bar at right."""
    rows, cols = values.shape
    annotate = cell_text is not None
    if cell_text is not None:
        cell_w = max(38.0, CHAR_PX * max((len(t) for r in cell_text for t in r), default=1) + 6)
    else:
        cell_w = min(40.0, max(10.0, 640 / max(cols, 1)))
    cell_h = 18.0 if annotate else min(22.0, max(8.0, 520 / max(rows, 1)))
    ys = [_short(y) for y in y_labels]
    xs = [_short(x) for x in x_labels]
    left = 8 + CHAR_PX * max((len(y) for y in ys), default=1) + (18 if y_title else 0)
    top = 6.0
    bottom = 10 + 0.75 * CHAR_PX * max((len(x) for x in xs), default=1) + (18 if x_title else 0)
    grid_w, grid_h = cols * cell_w, rows * cell_h
    bar_x = left + grid_w + 16
    width, height = bar_x + 12 + CHAR_PX * 9, top + max(grid_h, 60) + bottom
    gradient = new_id("grad")
    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0f}' height='{height:.0f}' "
        f"role='img'><defs><linearGradient id='{gradient}' x1='0' y1='1' x2='0' y2='0'>"
        + "".join(f"<stop offset='{t}' stop-color='{color(t, scale)}'/>" for t, _ in scale)
        + "</linearGradient></defs>"
    ]
    for i in range(rows):
        y = top + i * cell_h
        parts.append(
            f"<text x='{left - 4:.1f}' y='{y + cell_h / 2 + 4:.1f}' text-anchor='end'>"
            f"{escape(ys[i])}</text>"
        )
        for j in range(cols):
            t = position(float(values[i, j]))
            tip = tooltips[i][j] if tooltips is not None else f"{y_labels[i]}, {x_labels[j]}"
            parts.append(
                f"<rect class='anat-cell' x='{left + j * cell_w:.1f}' y='{y:.1f}' "
                f"width='{cell_w:.1f}' height='{cell_h:.1f}' fill='{color(t, scale)}'>"
                f"<title>{escape(tip)}: {escape(fmt(float(values[i, j])))}</title></rect>"
            )
            if cell_text is not None:
                parts.append(
                    f"<text x='{left + (j + 0.5) * cell_w:.1f}' y='{y + cell_h / 2 + 4:.1f}' "
                    f"text-anchor='middle' fill='{text_color(t, scale)}' pointer-events='none'>"
                    f"{escape(cell_text[i][j])}</text>"
                )
    for j, x in enumerate(xs):
        cx, cy = left + (j + 0.5) * cell_w, top + grid_h + 8
        parts.append(
            f"<text x='{cx:.1f}' y='{cy:.1f}' text-anchor='end' "
            f"transform='rotate(-45 {cx:.1f} {cy:.1f})'>{escape(x)}</text>"
        )
    if x_title:
        parts.append(
            f"<text x='{left + grid_w / 2:.1f}' y='{height - 4:.1f}' text-anchor='middle' "
            f"font-weight='bold'>{escape(x_title)}</text>"
        )
    if y_title:
        cy = top + grid_h / 2
        parts.append(
            f"<text x='12' y='{cy:.1f}' text-anchor='middle' font-weight='bold' "
            f"transform='rotate(-90 12 {cy:.1f})'>{escape(y_title)}</text>"
        )
    bar_h = max(grid_h, 60)
    parts.append(
        f"<rect x='{bar_x:.1f}' y='{top}' width='12' height='{bar_h:.1f}' "
        f"fill='url(#{gradient})' stroke='#999' stroke-width='.5'/>"
    )
    low, high = ends
    for frac, value in ((0.0, high), (1.0, low)):
        parts.append(
            f"<text x='{bar_x + 16:.1f}' y='{top + frac * bar_h + (8 if frac == 0 else 0):.1f}'>"
            f"{escape(tick_text(value))}</text>"
        )
    if colorbar_label:
        parts.append(
            f"<text x='{bar_x + 16:.1f}' y='{top + bar_h / 2 + 4:.1f}'>"
            f"{escape(colorbar_label)}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def heatmap(
    values: Any,
    x_labels: Sequence[Any] | None = None,
    y_labels: Sequence[Any] | None = None,
    *,
    title: str | None = None,
    x_title: str | None = None,
    y_title: str | None = None,
    scale: str = "diverging",
    vmin: float | None = None,
    vmax: float | None = None,
    annotate: bool | None = None,
) -> HTMLFigure:
    """A heatmap of a 2-D tensor ``[rows, columns]``, e.g. a patching result ``[layer, pos]`` or
    ``[layer, head]``: row i is ``y_labels[i]`` (default its index), column j ``x_labels[j]``.

    `scale` "diverging" (default) centres white at zero, red below and blue above, symmetric
    around zero unless `vmin`/`vmax` say otherwise; "sequential" runs white to blue from the
    smallest value (or `vmin`) to the largest (or `vmax`). `annotate` writes each value in its
    cell (default: when the grid has at most 24 columns and 40 rows). Every cell has a tooltip.
    """
    array = to_array(values, "values")
    if array.ndim != 2:
        raise ValueError(
            f"values must be 2-D [rows, columns] (e.g. [layer, pos]), got shape {array.shape}."
        )
    rows, cols = array.shape
    xs = check_labels(
        x_labels if x_labels is not None else range(cols), "x_labels", cols, "values' columns"
    )
    ys = check_labels(
        y_labels if y_labels is not None else range(rows), "y_labels", rows, "values' rows"
    )
    position, low, high = _scale_positions(array, scale, vmin, vmax)
    if annotate is None:
        annotate = cols <= 24 and rows <= 40
    text = [[cell_fmt(float(v)) for v in row] for row in array] if annotate else None
    tips = [[f"{ys[i]}, {xs[j]}" for j in range(cols)] for i in range(rows)]
    svg = heatmap_svg(
        array, xs, ys, position, SCALES[scale], (low, high),
        tooltips=tips, cell_text=text, x_title=x_title, y_title=y_title,
    )  # fmt: skip
    return HTMLFigure(figure_div(new_id("heatmap"), title, svg), title or "heatmap", "heatmap")


def bar(
    values: Any,
    labels: Sequence[Any] | None = None,
    *,
    title: str | None = None,
    value_label: str = "",
) -> HTMLFigure:
    """Horizontal bars, one per component (e.g. direct logit attribution per layer or head):
    blue to the right for positive values, red to the left for negative ones, the value written
    at the bar's end and in its tooltip. `values` is 1-D; `labels` (default: the indices) name
    the bars, top to bottom."""
    array = to_array(values, "values")
    if array.ndim != 1:
        raise ValueError(f"values must be 1-D [components], got shape {array.shape}.")
    n = array.shape[0]
    names = check_labels(labels if labels is not None else range(n), "labels", n, "values")
    shown = [_short(name, 32) for name in names]
    finite = array[np.isfinite(array)]
    low = min(0.0, float(finite.min())) if finite.size else 0.0
    high = max(0.0, float(finite.max())) if finite.size else 1.0
    span = (high - low) or 1.0
    plot_w, row_h = 420.0, 18.0
    left = 10 + CHAR_PX * max((len(s) for s in shown), default=1)
    value_w = CHAR_PX * 10
    zero = left + value_w + plot_w * (-low / span)
    width = left + plot_w + 2 * value_w + 10
    height = n * row_h + 30
    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width:.0f}' height='{height:.0f}'>"]
    for i, (value, name) in enumerate(zip(array.tolist(), shown)):
        y = 4 + i * row_h
        v = value if np.isfinite(value) else 0.0
        x0, x1 = sorted((zero, zero + plot_w * v / span))
        fill = "#2166ac" if v >= 0 else "#b2182b"
        parts.append(
            f"<text x='{left - 4:.1f}' y='{y + 13:.1f}' text-anchor='end'>{escape(name)}</text>"
            f"<rect class='anat-bar' x='{x0:.1f}' y='{y + 2:.1f}' width='{max(x1 - x0, 0.5):.1f}' "
            f"height='{row_h - 4:.1f}' fill='{fill}'><title>{escape(names[i])}: "
            f"{escape(fmt(value))}</title></rect>"
            f"<text x='{(x1 + 4) if v >= 0 else (x0 - 4):.1f}' y='{y + 13:.1f}' "
            f"text-anchor='{'start' if v >= 0 else 'end'}' fill='#444'>{escape(fmt(value))}</text>"
        )
    axis_y = 4 + n * row_h
    parts.append(
        f"<line x1='{zero:.1f}' y1='2' x2='{zero:.1f}' y2='{axis_y:.1f}' stroke='#333'/>"
        f"<text x='{zero:.1f}' y='{axis_y + 14:.1f}' text-anchor='middle'>0</text>"
    )
    if value_label:
        parts.append(
            f"<text x='{left + value_w + plot_w / 2:.1f}' y='{axis_y + 24:.1f}' "
            f"text-anchor='middle' font-weight='bold'>{escape(value_label)}</text>"
        )
    parts.append("</svg>")
    return HTMLFigure(figure_div(new_id("bar"), title, "".join(parts)), title or "bar", "bar")


def token_values(
    tokens: Sequence[str],
    values: Any,
    *,
    title: str | None = None,
    scale: str = "diverging",
    vmin: float | None = None,
    vmax: float | None = None,
) -> HTMLFigure:
    """Text coloured by one value per token (a per-token loss, a neuron's activation, a patching
    effect), each token's value in its tooltip. `tokens` are strings (e.g.
    ``model.to_str_tokens(text)``), `values` 1-D of the same length; `scale` as in `heatmap`."""
    array = to_array(values, "values")
    if array.ndim != 1:
        raise ValueError(f"values must be 1-D [tokens], got shape {array.shape}.")
    names = check_labels(tokens, "tokens", array.shape[0], "values")
    position, low, high = _scale_positions(array, scale, vmin, vmax)
    palette = SCALES[scale]
    spans = []
    for i, (token, value) in enumerate(zip(names, array.tolist())):
        t = position(value)
        spans.append(
            f"<span class='anat-tok' data-i='{i}' style='background:{color(t, palette)};"
            f"color:{text_color(t, palette)}' title='{i}: {escape(repr(token))} = "
            f"{escape(fmt(value))}'>{escape(show_token(token))}</span>"
        )
    stops = ",".join(f"{color(t, palette)} {t * 100:.0f}%" for t, _ in palette)
    legend = (
        f"<div style='margin-top:6px;display:flex;align-items:center;gap:6px'>"
        f"<span>{escape(fmt(low))}</span><span style='display:inline-block;width:160px;"
        f"height:10px;background:linear-gradient(to right,{stops});border:1px solid #999'>"
        f"</span><span>{escape(fmt(high))}</span></div>"
    )
    inner = f"<div class='anat-tokens'>{''.join(spans)}</div>{legend}"
    fid = new_id("tokens")
    return HTMLFigure(figure_div(fid, title, inner), title or "token values", "token_values")


PALETTE = ("#2166ac", "#b2182b", "#1b7837", "#762a83", "#e08214", "#35978f", "#8c510a", "#4d4d4d")


def line(
    data: Any,
    x: str | Sequence[float] | None = None,
    *,
    title: str | None = None,
    y_label: str = "",
    log_y: bool = False,
) -> HTMLFigure:
    """Lines over a shared x axis (a metric over training steps, e.g.): one polyline per
    series, a marker with a tooltip (series, x, y) at every point, the y range written on the
    axis, a legend. `data` is a pandas DataFrame (every numeric column but `x` is a series) or a
    dict of name -> 1-D values, where `x` may name the x column or key (e.g. ``"step"``), or one
    1-D series; `x` may also be the values themselves (default: 0, 1, ...). `log_y` plots log10 of positive
    values (losses)."""
    series, xs = _line_series(data, x)
    if log_y:
        for name, values in series.items():
            if not (values[np.isfinite(values)] > 0).all():
                raise ValueError(f"log_y needs positive values; series {name!r} has others.")
        series = {name: np.log10(values) for name, values in series.items()}
    finite = np.concatenate([v[np.isfinite(v)] for v in series.values()])
    low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    span_y = (high - low) or 1.0
    x_low, x_high = float(xs.min()), float(xs.max())
    span_x = (x_high - x_low) or 1.0
    left, top, plot_w, plot_h = 70.0, 10.0, 460.0, 220.0
    legend_y = top + plot_h + 34

    def point(xv: float, yv: float) -> tuple[float, float]:
        return left + plot_w * (xv - x_low) / span_x, top + plot_h * (1 - (yv - low) / span_y)

    parts = [
        f"<svg xmlns='http://www.w3.org/2000/svg' width='{left + plot_w + 20:.0f}' "
        f"height='{legend_y + 18 * len(series) + 6:.0f}'>",
        f"<rect x='{left}' y='{top}' width='{plot_w}' height='{plot_h}' fill='none' "
        "stroke='#999'/>",
    ]
    shown = (lambda v: fmt(10**v)) if log_y else fmt
    for value, y in ((high, top + 4), (low, top + plot_h)):
        parts.append(
            f"<text x='{left - 4}' y='{y:.1f}' text-anchor='end'>{escape(shown(value))}</text>"
        )
    for value, anchor in ((x_low, "start"), (x_high, "end")):
        px = left if anchor == "start" else left + plot_w
        parts.append(
            f"<text x='{px:.1f}' y='{top + plot_h + 14:.1f}' text-anchor='{anchor}'>"
            f"{escape(fmt(value))}</text>"
        )
    if y_label:
        parts.append(
            f"<text x='12' y='{top + plot_h / 2:.1f}' font-weight='bold' transform='rotate(-90 12 "
            f"{top + plot_h / 2:.1f})' text-anchor='middle'>{escape(y_label)}</text>"
        )
    for i, (name, values) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        points = [point(xv, yv) for xv, yv in zip(xs.tolist(), values.tolist()) if np.isfinite(yv)]
        path = " ".join(f"{px:.1f},{py:.1f}" for px, py in points)
        parts.append(
            f"<polyline class='anat-line' points='{path}' fill='none' stroke='{colour}' "
            "stroke-width='1.5'/>"
        )
        for xv, yv in zip(xs.tolist(), values.tolist()):
            if not np.isfinite(yv):
                continue
            px, py = point(xv, yv)
            parts.append(
                f"<circle class='anat-point' cx='{px:.1f}' cy='{py:.1f}' r='2.5' fill='{colour}'>"
                f"<title>{escape(name)} at {escape(fmt(xv))}: {escape(shown(yv))}</title></circle>"
            )
        y = legend_y + 18 * i
        parts.append(
            f"<line x1='{left}' y1='{y - 4}' x2='{left + 18}' y2='{y - 4}' stroke='{colour}' "
            f"stroke-width='2'/><text x='{left + 24}' y='{y}'>{escape(_short(name, 40))}</text>"
        )
    parts.append("</svg>")
    return HTMLFigure(figure_div(new_id("line"), title, "".join(parts)), title or "line", "line")


def _line_series(data: Any, x: Any) -> tuple[dict[str, np.ndarray], np.ndarray]:
    if hasattr(data, "columns") and hasattr(data, "to_numpy"):  # a pandas DataFrame
        numeric = [c for c in data.columns if c == x or np.issubdtype(data[c].dtype, np.number)]
        series = {str(c): data[c].to_numpy(dtype=float) for c in numeric}
    elif isinstance(data, dict):
        series = {str(k): to_array(v, f"data[{k!r}]").astype(float) for k, v in data.items()}
    else:
        series = {"values": to_array(data, "data").astype(float)}
    x_values = None
    if isinstance(x, str):  # a column (or key) of `data`
        if x not in series:
            raise ValueError(f"x={x!r} is not a column; columns: {list(series)}.")
        x_values = series.pop(x)
    if not series:
        raise ValueError("line needs at least one series of numbers.")
    for name, values in series.items():
        if values.ndim != 1:
            raise ValueError(f"series {name!r} must be 1-D, got shape {values.shape}.")
    lengths = {len(v) for v in series.values()}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(
            f"the series must have one non-zero length, got lengths {sorted(lengths)}."
        )
    n = lengths.pop()
    if x_values is None:
        x_values = np.arange(n, dtype=float) if x is None else to_array(x, "x").astype(float)
    if x_values.shape != (n,):
        raise ValueError(f"x has shape {x_values.shape}; the series have {n} values.")
    return series, x_values


__all__ = ["bar", "heatmap", "heatmap_svg", "line", "token_values"]
