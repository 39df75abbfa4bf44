"""What "a failing call leaves the model exactly as it was" means, checked after bad input.

`unchanged(model)` snapshots every parameter and buffer (bit for bit), every hook attached to
every hook point, the config, and the logits of a fixed input; on leaving the block it asserts
all of them are the same. Use it around each call that must fail:

    with unchanged(model), pytest.raises(ValueError, match="attention_mask"):
        model(tokens, attention_mask=bad)
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

import anatomist


def _hooks(model: Any) -> dict[str, tuple[int, int, int, int]]:
    return {
        name: (
            len(hp.fwd_hooks),
            len(hp.bwd_hooks),
            len(hp._forward_hooks),
            len(hp._backward_hooks),
        )
        for name, hp in model.hook_dict.items()
    }


def _probe(model: Any) -> torch.Tensor:
    vocab = model.cfg.d_vocab
    gen = torch.Generator().manual_seed(123)
    tokens = torch.randint(0, vocab, (2, 6), generator=gen)
    with torch.no_grad():
        return model(tokens.to(model.W_E.device))


@contextmanager
def unchanged(model: Any, probe: bool = True) -> Iterator[None]:
    """Assert that the block leaves `model` as it found it: weights, hooks, config, logits."""
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    hooks = _hooks(model)
    cfg = copy.deepcopy(model.cfg.to_dict()) if hasattr(model.cfg, "to_dict") else None
    logits = _probe(model) if probe else None
    try:
        yield
    finally:
        after = model.state_dict()
        assert set(after) == set(weights), "the failing call added or removed tensors"
        for k, v in weights.items():
            assert after[k].dtype == v.dtype and after[k].shape == v.shape, k
            assert torch.equal(after[k], v), f"the failing call changed {k}"
        assert _hooks(model) == hooks, "the failing call left hooks behind"
        if cfg is not None:
            assert model.cfg.to_dict() == cfg, "the failing call changed the config"
        if logits is not None:
            assert torch.equal(_probe(model), logits), "the model computes something else now"


def tiny_model(**overrides: Any) -> anatomist.HookedTransformer:
    """A random-init 2-layer model (GPT-2 shaped unless overridden), no tokenizer."""
    settings: dict[str, Any] = dict(
        n_layers=2,
        d_model=16,
        n_heads=2,
        d_head=8,
        d_mlp=32,
        d_vocab=37,
        n_ctx=32,
        act_fn="gelu",
        normalization_type="LN",
    )
    settings.update(overrides)
    return anatomist.HookedTransformer(anatomist.TransformerConfig(**settings))
