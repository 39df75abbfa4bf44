"""all_composition_scores against the definition (Elhage et al. 2021), head pair by head pair."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import anatomist
from tests.helpers import randomize_small_params


def make(**options: Any) -> anatomist.HookedTransformer:
    settings: dict[str, Any] = dict(
        n_layers=3, d_model=16, n_ctx=16, d_head=4, n_heads=4, d_vocab=30, act_fn="gelu", seed=0
    )
    settings.update(options)
    model = anatomist.HookedTransformer(anatomist.TransformerConfig(**settings))
    randomize_small_params(model)
    return model


def reference_scores(model: anatomist.HookedTransformer, mode: str) -> torch.Tensor:
    """``||OV_1 M_2||_F / (||OV_1||_F ||M_2||_F)`` from dense float64 matrices built from each
    block's own parameters, zero unless the first head is in an earlier layer."""
    cfg = model.cfg
    group = cfg.n_heads // cfg.n_kv_heads

    def circuits(layer: int, head: int) -> tuple[torch.Tensor, torch.Tensor]:
        attn = model.blocks[layer].attn
        W_K, _, W_V, _ = attn.kv_weights  # stored key/value heads
        W_Q, W_O = attn.W_Q[head].double(), attn.W_O[head].double()
        qk = W_Q @ W_K[head // group].double().T  # [d_model, d_model]
        ov = W_V[head // group].double() @ W_O
        return qk.detach(), ov.detach()

    n, h = cfg.n_layers, cfg.n_heads
    scores = torch.zeros(n, h, n, h, dtype=torch.float64)
    for l1 in range(n):
        for h1 in range(h):
            _, ov1 = circuits(l1, h1)
            for l2 in range(l1 + 1, n):
                for h2 in range(h):
                    qk2, ov2 = circuits(l2, h2)
                    right = {"Q": qk2, "K": qk2.T, "V": ov2}[mode]
                    scores[l1, h1, l2, h2] = torch.linalg.norm(ov1 @ right) / (
                        torch.linalg.norm(ov1) * torch.linalg.norm(right)
                    )
    return scores


@pytest.mark.parametrize("mode", ["Q", "K", "V"])
@pytest.mark.parametrize("kv_heads", [4, 2], ids=["mha", "gqa"])
def test_composition_scores_match_the_definition(mode: str, kv_heads: int) -> None:
    model = make(n_key_value_heads=kv_heads)
    with torch.no_grad():
        scores = model.all_composition_scores(mode)
    cfg = model.cfg
    assert scores.shape == (cfg.n_layers, cfg.n_heads, cfg.n_layers, cfg.n_heads)
    want = reference_scores(model, mode)
    torch.testing.assert_close(scores.double(), want, rtol=1e-6, atol=1e-9)
    # Only earlier heads compose into later ones; the rest is zero.
    earlier = torch.arange(cfg.n_layers)[:, None] < torch.arange(cfg.n_layers)[None, :]
    assert bool((scores.permute(0, 2, 1, 3)[~earlier] == 0).all())
    assert bool((scores.permute(0, 2, 1, 3)[earlier] > 0).all())


def test_modes_differ_and_unknown_modes_are_refused() -> None:
    model = make()
    with torch.no_grad():
        q, k, v = (model.all_composition_scores(mode) for mode in "QKV")
    assert not torch.allclose(q, k) and not torch.allclose(q, v)
    with pytest.raises(ValueError, match="'Q', 'K' or 'V'"):
        model.all_composition_scores("O")
