"""Each picture on real tensors from a tiny model: structure, labels, values, clear errors."""

from __future__ import annotations

import re
from html import escape
from pathlib import Path

import numpy as np
import pytest
import torch

from anatomist import viz
from anatomist.analysis.patching import get_act_patch_resid_pre
from tests.viz.conftest import IOI, PROMPT


def cells(html: str) -> list[str]:
    return re.findall(r"<rect class='anat-cell'[^>]*>", html)


def ids(html: str) -> list[str]:
    return re.findall(r" id='([^']+)'", html)


@pytest.fixture(scope="module")
def run(tiny):  # type: ignore[no-untyped-def]
    with torch.no_grad():
        logits, cache = tiny.run_with_cache(PROMPT)
    return logits, cache, tiny.to_str_tokens(PROMPT)


# --- attention_patterns ---------------------------------------------------------------------------


def test_attention_patterns_draws_the_selected_heads(tiny, run) -> None:  # type: ignore[no-untyped-def]
    _, cache, tokens = run
    pattern = cache["pattern", 1][0]  # [heads, q, k], causal
    fig = viz.attention_patterns(tokens, pattern, [f"L1H{h}" for h in range(4)], selected=[0, 2])
    html = fig.html
    assert (
        html.count("type='checkbox'") == 4
        and len(re.findall(r"'checkbox' data-h='\d' checked", html)) == 2
    )
    drawn = cells(html)
    nonzero = int((pattern[[0, 2]] != 0).sum())
    assert len(drawn) == nonzero  # every non-masked cell of the two selected heads, no other
    assert int((pattern[0] != 0).sum()) == len(tokens) * (len(tokens) + 1) // 2  # causal
    assert "L1H3" in html and html.count("class='anat-tok'") == len(tokens)
    # The JSON data holds every head, for the script to draw the others when picked.
    data = re.search(r"class='anat-data'>(.*?)</script>", html, flags=re.S)
    assert data is not None and len(data.group(1)) > 4 * len(tokens) ** 2


def test_attention_patterns_accepts_one_head_and_lists(run) -> None:  # type: ignore[no-untyped-def]
    _, cache, tokens = run
    one = cache["pattern", 0][0, 1]
    fig = viz.attention_patterns(tokens, one.tolist())
    assert "H0" in fig.html and len(cells(fig.html)) == int((one != 0).sum())


def test_attention_patterns_rejects_bad_shapes(run) -> None:  # type: ignore[no-untyped-def]
    _, cache, tokens = run
    pattern = cache["pattern", 0][0]
    n = len(tokens)
    with pytest.raises(ValueError, match=rf"shape \(4, {n}, {n}\).*tokens has {n - 1} entries"):
        viz.attention_patterns(tokens[:-1], pattern)
    with pytest.raises(ValueError, match="must be square"):
        viz.attention_patterns(tokens, pattern[:, :-1])
    with pytest.raises(ValueError, match=r"\[heads, q, k\] or \[q, k\].*\(1, 4"):
        viz.attention_patterns(tokens, cache["pattern", 0])
    with pytest.raises(ValueError, match="head_labels has 3 labels but patterns' heads axis has 4"):
        viz.attention_patterns(tokens, pattern, ["a", "b", "c"])
    with pytest.raises(ValueError, match="selected heads"):
        viz.attention_patterns(tokens, pattern, selected=[4])


def test_tokens_are_escaped_and_ids_unique() -> None:
    tokens = ["<script>alert(1)</script>", '"&', "</script><b>", "x"]
    pattern = torch.tril(torch.ones(4, 4)) / torch.arange(1, 5)[:, None]
    first = viz.attention_patterns(tokens, pattern).html
    second = viz.attention_patterns(tokens, pattern).html
    for html in (first, viz.token_values(tokens, [1.0, -1.0, 0.0, 2.0]).html):
        assert "<script>alert" not in html and "<b>" not in html
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "&quot;&amp;" in html
    # Only the figure's own two scripts: the data (with "<" as \u003c) and the code.
    assert first.count("<script") == 2 and first.count("</script>") == 2
    assert set(ids(first)).isdisjoint(ids(second))
    report = viz.Report("two").add("a", viz.attention_patterns(tokens, pattern))
    report.add("b", viz.attention_patterns(tokens, pattern), viz.heatmap(np.eye(2)))
    all_ids = ids(report.html)
    assert len(all_ids) == len(set(all_ids)) >= 3


# --- heatmap, bar, token_values --------------------------------------------------------------------


def test_heatmap_of_a_patching_result(tiny) -> None:  # type: ignore[no-untyped-def]
    clean, corrupted = tiny.to_tokens(IOI[0]), tiny.to_tokens(IOI[1])
    io, s = tiny.to_single_token(IOI[2]), tiny.to_single_token(IOI[3])
    with torch.no_grad():
        _, clean_cache = tiny.run_with_cache(clean)
        result = get_act_patch_resid_pre(
            tiny, corrupted, clean_cache, lambda lg: lg[0, -1, io] - lg[0, -1, s], progress=False
        )  # [n_layers, pos]
    rows, cols = result.shape
    assert (rows, cols) == (2, clean.shape[1])
    labels = [f"{p} {t}" for p, t in enumerate(tiny.to_str_tokens(clean))]
    html = viz.heatmap(result, labels, [f"L{i}" for i in range(rows)], title="resid").html
    drawn = cells(html)
    assert len(drawn) == rows * cols
    assert all(escape(label) in html for label in labels)
    # Diverging scale centred at zero: the largest |value| is the darkest end of its side.
    flat = result.flatten()
    extreme = int(flat.abs().argmax())
    expected = "rgb(5,48,97)" if flat[extreme] > 0 else "rgb(103,0,31)"
    assert expected in drawn[extreme]
    zero = viz.heatmap(torch.tensor([[0.0, 1.0], [-1.0, 0.5]])).html
    fills = re.findall(r"fill='(rgb\([^)]*\))'><title>", zero)
    assert fills[:3] == ["rgb(247,247,247)", "rgb(5,48,97)", "rgb(103,0,31)"]


def test_heatmap_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"values must be 2-D .*shape \(3,\)"):
        viz.heatmap(torch.zeros(3))
    with pytest.raises(ValueError, match="x_labels has 2 labels but values' columns has 3"):
        viz.heatmap(torch.zeros(4, 3), ["a", "b"])
    with pytest.raises(ValueError, match="y_labels has 5 labels but values' rows has 4"):
        viz.heatmap(torch.zeros(4, 3), None, list("abcde"))
    with pytest.raises(ValueError, match="scale must be"):
        viz.heatmap(torch.zeros(4, 3), scale="rainbow")


def test_bar_of_direct_logit_attribution(tiny, run) -> None:  # type: ignore[no-untyped-def]
    _, cache, _ = run
    stack, labels = cache.decompose_resid(layer=-1, pos_slice=-1, return_labels=True)
    attrs = cache.logit_attrs(stack, "mat", "dog", pos_slice=-1)[:, 0]  # [components]
    html = viz.bar(attrs, labels, title="DLA").html
    bars = re.findall(r"<rect class='anat-bar'[^>]*>", html)
    assert len(bars) == len(labels) == attrs.shape[0]
    negatives = sum("#b2182b" in b for b in bars)
    assert negatives == int((attrs < 0).sum())
    for label, value in zip(labels, attrs.tolist()):
        assert f"{label}: " in html and label in html
        assert value == pytest.approx(
            float(re.search(rf"{label}: ([^<]+)<", html).group(1)), rel=0.02, abs=0.01
        )  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="labels has 2 labels but values has"):
        viz.bar(attrs, labels[:2])
    with pytest.raises(ValueError, match=r"1-D \[components\], got shape \(2, 2\)"):
        viz.bar(torch.zeros(2, 2))


def test_token_values_of_the_loss(tiny) -> None:  # type: ignore[no-untyped-def]
    with torch.no_grad():
        loss = tiny(PROMPT, return_type="loss", loss_per_token=True)[0]  # [pos - 1]
    tokens = tiny.to_str_tokens(PROMPT)[1:]
    html = viz.token_values(tokens, loss, scale="sequential").html
    spans = re.findall(r"<span class='anat-tok'[^>]*>", html)
    assert len(spans) == len(tokens) == loss.shape[0]
    darkest = int(loss.argmax())
    assert "background:rgb(8,48,107)" in spans[darkest]
    with pytest.raises(ValueError, match=f"tokens has {len(tokens) + 1} labels but values has"):
        viz.token_values(tiny.to_str_tokens(PROMPT), loss)
    with pytest.raises(ValueError, match=r"1-D \[tokens\]"):
        viz.token_values(tokens, loss[None])


# --- logit_lens -----------------------------------------------------------------------------------


def tooltip_numbers(html: str, key: str) -> list[float]:
    return [float(v) for v in re.findall(rf"{key} ([0-9.e+-]+)[;,]", html)]


def test_logit_lens_probabilities_end_on_the_models_own(tiny, run) -> None:  # type: ignore[no-untyped-def]
    logits, cache, tokens = run
    html = viz.logit_lens(tiny, cache, "mat", tokens=tokens).html
    n_rows, n_pos = tiny.cfg.n_layers + 1, len(tokens)
    assert len(cells(html)) == n_rows * n_pos
    assert all(escape(f"{p} {t}") in html for p, t in enumerate(tokens))
    probs = [float(v) for v in re.findall(r"\) = ([0-9.]+), rank", html)]
    ranks = [int(v) for v in re.findall(r", rank (\d+);", html)]
    mat = tiny.to_single_token("mat")
    own = logits[0].float().softmax(-1)[:, mat]  # the model's own output, per position
    assert probs[-n_pos:] == pytest.approx(own.tolist(), abs=1e-4)
    own_rank = (logits[0] > logits[0, :, mat : mat + 1]).sum(-1)
    assert ranks[-n_pos:] == own_rank.tolist()
    assert len(probs) == n_rows * n_pos


def test_logit_lens_rank_mode_positions_and_errors(tiny, run) -> None:  # type: ignore[no-untyped-def]
    logits, cache, tokens = run
    html = viz.logit_lens(tiny, cache, None, tokens=tokens, pos=slice(-3, None), mode="rank").html
    assert len(cells(html)) == (tiny.cfg.n_layers + 1) * 3
    # Without an answer each column tracks the model's final prediction: rank 0 in the last row.
    last_row = re.findall(r"final_post, pos \d+ [^:]*: p\([^)]*\) = [0-9.]+, rank (\d+)", html)
    assert last_row == ["0", "0", "0"]
    with pytest.raises(ValueError, match="tokens has 2 labels but the cached positions has"):
        viz.logit_lens(tiny, cache, "mat", tokens=tokens[:2])
    with pytest.raises(ValueError, match="mode must be one of"):
        viz.logit_lens(tiny, cache, "mat", mode="logit")
    with pytest.raises(ValueError, match="batch_index 3 is outside the cache's batch of 1"):
        viz.logit_lens(tiny, cache, "mat", batch_index=3)
    with pytest.raises(ValueError, match="pos 40 is outside"):
        viz.logit_lens(tiny, cache, "mat", pos=40)


# --- figure objects, report -----------------------------------------------------------------------


def test_save_writes_exactly_that_path(tmp_path: Path) -> None:
    fig = viz.heatmap(torch.randn(3, 4), title="patching <result>")
    target = tmp_path / "sub" / "fig.html"
    target.parent.mkdir()
    assert fig.save(target) == target
    assert [p.relative_to(tmp_path) for p in tmp_path.rglob("*")] == [
        Path("sub"),
        Path("sub/fig.html"),
    ]
    page = target.read_text()
    assert page.startswith("<!doctype html>") and fig.html in page
    assert "<title>patching &lt;result&gt;</title>" in page
    assert fig._repr_html_() == fig.html
    assert len(repr(fig)) < 120 and "heatmap" in repr(fig) and str(fig) == repr(fig)


def test_demo_report_on_the_tiny_model(tiny) -> None:  # type: ignore[no-untyped-def]
    report = viz.demo_report(tiny, "the cat sat on the", "mat", seq_len=8, ioi=IOI)
    kinds = [f.kind for f in report.figures]
    assert kinds == [
        "bar", "logit_lens", "heatmap", "attention_patterns", "token_values", "heatmap", "bar"
    ]  # fmt: skip
    assert len(report.sections) == 5 and "Activation patching" in report.html
    skipped = viz.demo_report(
        tiny, "the cat", "mat", seq_len=4, ioi=("the cat", "the cat sat", " mary", " john")
    )
    assert "Left out: the two prompts tokenize to different lengths" in skipped.html
    with pytest.raises(TypeError, match="HTMLFigure"):
        report.add("x", "not a figure")  # type: ignore[arg-type]


def test_line_plots_each_series_with_its_points_in_place() -> None:
    steps = [0, 10, 20, 30]
    html = viz.line({"train": [4.0, 2.0, 1.0, 0.5], "test": [4.0, 3.9, 3.8, 0.6]}, x=steps).html
    assert html.count("class='anat-line'") == 2 and html.count("class='anat-point'") == 8
    lines = re.findall(r"class='anat-line' points='([^']*)'", html)
    train_points = [tuple(map(float, p.split(","))) for p in lines[0].split()]
    xs, ys = zip(*train_points)
    assert list(xs) == sorted(xs) and xs[0] < xs[-1]  # left to right in step order
    assert list(ys) == sorted(ys)  # a falling loss goes down the picture (SVG y grows down)
    assert "test at 30: 0.6" in html and "train at 10: 2" in html
    log_html = viz.line({"loss": [1.0, 0.1, 0.01]}, log_y=True).html
    log_points = re.findall(r"class='anat-line' points='([^']*)'", log_html)[0].split()
    gaps = np.diff([float(p.split(",")[1]) for p in log_points])
    assert gaps[0] == pytest.approx(gaps[1])  # equal ratios, equal steps on a log axis
    with pytest.raises(ValueError, match="log_y needs positive values"):
        viz.line({"loss": [1.0, -1.0]}, log_y=True)
    with pytest.raises(ValueError, match="one non-zero length"):
        viz.line({"a": [1.0, 2.0], "b": [1.0]})
    with pytest.raises(ValueError, match="x has shape"):
        viz.line([1.0, 2.0], x=[1.0])
    # x may name a key of a dict, as a column of a DataFrame: it is the axis, not a series.
    keyed = viz.line({"step": steps, "train": [4.0, 2.0, 1.0, 0.5]}, x="step").html
    assert keyed.count("class='anat-line'") == 1 and "train at 30: 0.5" in keyed
    with pytest.raises(ValueError, match="x='epoch' is not a column"):
        viz.line({"train": [1.0, 2.0]}, x="epoch")
