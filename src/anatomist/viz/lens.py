"""`logit_lens`: a layer x position heatmap of the answer's probability or rank, read off the
residual stream before each block (nostalgebraist 2020), with the top tokens in each tooltip."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from anatomist.analysis.logit_lens import _unembed
from anatomist.viz.figure import (
    SEQUENTIAL,
    HTMLFigure,
    check_labels,
    figure_div,
    fmt,
    new_id,
    show_token,
)
from anatomist.viz.plots import heatmap_svg

MODES = ("prob", "rank")


def logit_lens(
    model: Any,
    cache: Any,
    answer: int | str | None = None,
    *,
    tokens: Sequence[str] | None = None,
    pos: int | slice | None = None,
    mode: str = "prob",
    batch_index: int = 0,
    top_k: int = 5,
    title: str | None = None,
) -> HTMLFigure:
    """The logit lens as a heatmap: rows are the residual stream before each block and the
    stream the final norm reads (the model's own output), columns the positions.

    `cache` is an `ActivationCache` from ``model.run_with_cache(...)`` holding every block's
    ``hook_resid_pre`` and the last ``hook_resid_post`` (e.g. the full cache). Each row is
    normalized by ``ln_final`` and unembedded (``cache.accumulated_resid(apply_ln=True)``, as
    `anatomist.analysis.logit_lens`). `answer` (a token id or a single-token string) is the
    token whose probability (`mode` "prob", on 0..1) or rank (`mode` "rank", 0 = top, on a log
    scale) each cell shows; None shows, at each position, the token the model finally predicts
    there. `tokens` label the positions (default: their indices; ``model.to_str_tokens(...)``
    gives them); `pos` selects positions (an int or a slice; default all). `batch_index` picks
    the prompt of a batched cache. Each cell's tooltip lists the `top_k` tokens.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}.")
    pos_slice = slice(None) if pos is None else pos
    stack, labels = cache.accumulated_resid(apply_ln=True, return_labels=True)
    # [rows, batch, pos, d_model], or [rows, pos, d_model] for a cache without a batch axis
    if stack.dim() == 4:
        if not -stack.shape[1] <= batch_index < stack.shape[1]:
            raise ValueError(
                f"batch_index {batch_index} is outside the cache's batch of {stack.shape[1]}."
            )
        stack = stack[:, batch_index]
    elif stack.dim() != 3:
        raise ValueError(
            "logit_lens needs a cache of a forward pass over positions ([batch, pos, d_model] "
            f"activations); its residual stack has shape {tuple(stack.shape)}."
        )
    n_pos = stack.shape[1]
    if isinstance(pos_slice, slice):
        positions = list(range(n_pos))[pos_slice]
    else:
        if not -n_pos <= int(pos_slice) < n_pos:
            raise ValueError(f"pos {pos_slice} is outside the cache's {n_pos} positions.")
        positions = [int(pos_slice) % n_pos]
    if not positions:
        raise ValueError(f"pos {pos_slice} selects none of the cache's {n_pos} positions.")
    names = (
        check_labels(tokens, "tokens", n_pos, "the cached positions")
        if tokens is not None
        else [str(p) for p in range(n_pos)]
    )
    with torch.no_grad():
        logits = _unembed(model, stack[:, positions]).float()  # [rows, pos, d_vocab]
        probs = logits.softmax(-1)
        if answer is None:
            target = logits[-1].argmax(-1)  # the model's own prediction at each position
        else:
            token = model.to_single_token(answer) if isinstance(answer, str) else int(answer)
            if not 0 <= token < logits.shape[-1]:
                raise ValueError(
                    f"answer id {token} is outside the vocabulary ({logits.shape[-1]})."
                )
            target = torch.full((len(positions),), token)
        index = target.view(1, -1, 1).expand(logits.shape[0], -1, 1)
        answer_prob = probs.gather(-1, index)[..., 0]  # [rows, pos]
        rank = (logits > logits.gather(-1, index)).sum(-1)  # [rows, pos]
        top = probs.topk(min(top_k, probs.shape[-1]), dim=-1)

    def tok(i: int) -> str:
        return repr(show_token(model.to_single_str_token(int(i)))) if model.tokenizer else str(i)

    rows = len(labels)
    x_labels = [f"{p} {show_token(names[p])}" for p in positions]
    tips: list[list[str]] = []
    for r in range(rows):
        tips.append([])
        for c, p in enumerate(positions):
            listing = ", ".join(
                f"{tok(i)} {float(v):.3f}"
                for v, i in zip(top.values[r, c].tolist(), top.indices[r, c].tolist())
            )
            tips[r].append(
                f"{labels[r]}, pos {p} {names[p]!r}: p({tok(int(target[c]))}) = "
                f"{float(answer_prob[r, c]):.4f}, rank {int(rank[r, c])}; top: {listing}; {mode}"
            )
    position: Callable[[float], float]
    ticks: Callable[[float], str]
    if mode == "prob":
        values = answer_prob.numpy().astype(np.float64)
        position, ends, ticks = (lambda v: v), (0.0, 1.0), fmt
        text = [[f"{v:.2f}" for v in row] for row in values.tolist()]
    else:
        values = rank.numpy().astype(np.float64)
        top_rank = math.log10(model.cfg.d_vocab)  # rank 0 darkest, the last rank white
        position = lambda v: 1.0 - math.log10(1.0 + v) / top_rank  # noqa: E731
        ends, ticks = (float(model.cfg.d_vocab - 1), 0.0), lambda v: f"rank {int(v)}"
        text = [[str(int(v)) for v in row] for row in values.tolist()]
    svg = heatmap_svg(
        values,
        x_labels,
        labels,
        position,
        SEQUENTIAL,
        ends,
        tooltips=tips,
        cell_text=text if len(positions) <= 24 else None,
        x_title="position",
        y_title="residual stream before",
        tick_text=ticks,
    )
    what = "the final prediction" if answer is None else repr(answer)
    heading = title or f"Logit lens: {'probability' if mode == 'prob' else 'rank'} of {what}"
    return HTMLFigure(figure_div(new_id("lens"), heading, svg), heading, "logit_lens")
