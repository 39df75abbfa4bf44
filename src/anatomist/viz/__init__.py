"""Pictures of a model's internals as self-contained HTML: no network, no CDN, no plotting
library. Each function returns an `HTMLFigure` that shows itself inline in Jupyter
(``_repr_html_``), gives its markup as ``.html`` and writes a standalone page with ``.save(path)``;
`Report` puts several on one page. See docs/viz.md.

- `attention_patterns(tokens, patterns, head_labels)`: heads side by side, pick heads, hover a
  token or cell to highlight where it attends to and what attends to it;
- `logit_lens(model, cache, answer)`: layer x position heatmap of the answer's probability/rank;
- `heatmap(values, x_labels, y_labels)`: patching results, diverging scale centred at zero;
- `bar(values, labels)`: direct logit attribution by component;
- `token_values(tokens, values)`: text coloured by a value per token.
"""

from anatomist.viz.attention import attention_patterns
from anatomist.viz.demo import demo_report
from anatomist.viz.figure import HTMLFigure
from anatomist.viz.lens import logit_lens
from anatomist.viz.plots import bar, heatmap, line, token_values
from anatomist.viz.report import Report

__all__ = [
    "HTMLFigure",
    "Report",
    "attention_patterns",
    "bar",
    "demo_report",
    "heatmap",
    "line",
    "logit_lens",
    "token_values",
]
