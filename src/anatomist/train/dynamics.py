"""Training dynamics: a metric over every checkpoint of a run.

table = metrics_over_checkpoints("runs/toy", lambda m: {"loss": m(x, return_type="loss")})
anatomist.viz.line(table, x="step", title="loss over training")
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from numbers import Real
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from anatomist.train.loop import TrainingError, checkpoint_steps

Metric = Callable[[Any], Any]


def metrics_over_checkpoints(
    save_dir: str | os.PathLike[str],
    metric: Metric,
    processing: bool = False,
    progress: bool = True,
    device: str | torch.device | None = None,
) -> Any:
    """Load each checkpoint `train` saved in `save_dir` (in step order) and evaluate
    ``metric(model)`` on it, under ``torch.no_grad()``; a pandas DataFrame with a ``step``
    column and one column per metric.

    `metric` returns a number (a one-element tensor counts), giving a ``metric`` column, or a
    dict of numbers, giving a column each. Checkpoints load without weight processing unless
    `processing` (folding and centering change the weights themselves, e.g. the embedding's
    spectrum, though not what the model computes).
    """
    try:
        import pandas as pd
    except ImportError:
        raise ImportError(
            "metrics_over_checkpoints returns a pandas DataFrame: pip install pandas."
        ) from None
    from anatomist.model.transformer import HookedTransformer

    steps = checkpoint_steps(save_dir)
    if not steps:
        raise TrainingError(
            f"{save_dir} holds no complete training checkpoint (checkpoints/model_<step>"
            ".safetensors with its state_<step>.pt); train with save_every and save_dir."
        )
    load = (
        HookedTransformer.from_pretrained
        if processing
        else (HookedTransformer.from_pretrained_no_processing)
    )
    rows = []
    for step in tqdm(steps, desc="checkpoints", disable=not progress):
        model = load(Path(save_dir), checkpoint_value=step, progress=False, device=device)
        with torch.no_grad():
            value = metric(model)
        rows.append({"step": step, **_columns(value, step)})
    return pd.DataFrame(rows)


def _columns(value: Any, step: int) -> dict[str, float]:
    values = value if isinstance(value, Mapping) else {"metric": value}
    columns = {}
    for name, item in values.items():
        if isinstance(item, torch.Tensor):
            if item.numel() != 1:
                raise TrainingError(
                    f"metric {name!r} gave a tensor of shape {tuple(item.shape)} at step {step}; "
                    "return numbers (one per column)."
                )
            item = item.item()
        if isinstance(item, bool) or not isinstance(item, Real):
            raise TrainingError(
                f"metric {name!r} gave {type(item).__name__} at step {step}; return a number "
                "or a dict of numbers."
            )
        columns[str(name)] = float(item)
    return columns
