"""`Report`: several figures and notes in one self-contained HTML page."""

from __future__ import annotations

from pathlib import Path

from anatomist.viz.figure import HTMLFigure, escape, standalone_page


class Report:
    """A page of sections, each a heading, an optional note and optional figures::

        report = Report("IOI in SmolLM2")
        report.add("Patching the residual stream", heatmap(result), note="1 = clean restored")
        report.save("ioi.html")

    Shows inline in Jupyter like a figure (`_repr_html_`); `.html` is the whole page.
    """

    def __init__(self, title: str, intro: str | None = None) -> None:
        self.title = title
        self.intro = intro
        self.sections: list[tuple[str, str | None, list[HTMLFigure]]] = []

    def add(self, heading: str, *figures: HTMLFigure, note: str | None = None) -> Report:
        for figure in figures:
            if not isinstance(figure, HTMLFigure):
                raise TypeError(
                    f"Report.add takes HTMLFigure objects (from anatomist.viz), got "
                    f"{type(figure).__name__}."
                )
        self.sections.append((heading, note, list(figures)))
        return self

    @property
    def figures(self) -> list[HTMLFigure]:
        return [figure for _, _, figures in self.sections for figure in figures]

    def body(self) -> str:
        parts = [f"<h1 style='font-family:system-ui,sans-serif'>{escape(self.title)}</h1>"]
        if self.intro:
            parts.append(f"<p style='font-family:system-ui,sans-serif'>{escape(self.intro)}</p>")
        for number, (heading, note, figures) in enumerate(self.sections, start=1):
            parts.append(
                f"<section><h2 style='font-family:system-ui,sans-serif'>{number}. "
                f"{escape(heading)}</h2>"
            )
            if note:
                parts.append(
                    f"<p style='font-family:system-ui,sans-serif;max-width:900px'>{escape(note)}</p>"
                )
            parts.extend(figure.html for figure in figures)
            parts.append("</section>")
        return "\n".join(parts)

    @property
    def html(self) -> str:
        return standalone_page(self.title, self.body())

    def _repr_html_(self) -> str:
        return self.body()

    def save(self, path: str | Path) -> Path:
        """Write the page to `path` (exactly that file) and return it."""
        path = Path(path)
        path.write_text(self.html, encoding="utf-8")
        return path

    def __repr__(self) -> str:
        return (
            f"<Report {self.title!r}: {len(self.sections)} sections, {len(self.figures)} figures>"
        )

    __str__ = __repr__
