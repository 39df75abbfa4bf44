"""The nnsight side of each job.

nnsight compiles the body of every ``with model.trace(...)`` block from its source, so these
functions must live in a file on disk, and names the block assigns are visible after it only when
they exist before it (hence ``saved = []`` outside the block).
"""

from __future__ import annotations

from typing import Any

from torch import Tensor


def wrap(hf: Any, tokenizer: Any) -> Any:
    from nnsight import LanguageModel

    return LanguageModel(hf, tokenizer=tokenizer)


def _layers(lm: Any) -> Any:
    inner = lm.model if hasattr(lm, "model") and hasattr(lm.model, "layers") else lm.transformer
    return inner.layers if hasattr(inner, "layers") else inner.h


def forward(lm: Any, ids: Tensor) -> Any:
    with lm.trace(ids):
        logits = lm.output.logits.save()
    return logits


def hooked(lm: Any, ids: Tensor) -> Any:
    layers = _layers(lm)
    with lm.trace(ids):
        for layer in layers:
            layer.output  # noqa: B018 - touching the output is nnsight's no-op hook
        logits = lm.output.logits.save()
    return logits


def cache_all(lm: Any, ids: Tensor) -> dict[str, Any]:
    with lm.trace(ids) as tracer:
        cache = tracer.cache()
    return {key: cache[key].output for key in cache.keys()}  # noqa: SIM118 - a CacheView


def cache_layer(lm: Any, ids: Tensor) -> list[Any]:
    layers = _layers(lm)
    saved: list[Any] = []
    with lm.trace(ids):
        for layer in layers:
            saved.append(layer.output.save())
    return saved
