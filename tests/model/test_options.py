"""Model options that families switch on, checked against direct computations."""

from __future__ import annotations

from typing import Any

import torch

import anatomist
from tests.helpers import randomize_small_params


def make(**options: Any) -> anatomist.HookedTransformer:
    settings: dict[str, Any] = dict(
        n_layers=2, d_model=32, n_ctx=32, d_head=8, d_vocab=50, seed=0, act_fn="silu"
    )
    settings.update(options)
    model = anatomist.HookedTransformer(anatomist.TransformerConfig(**settings))
    randomize_small_params(model)
    return model


def tokens(pos: int = 12) -> torch.Tensor:
    return torch.randint(0, 50, (2, pos), generator=torch.Generator().manual_seed(3))


def test_sliding_window_limits_what_a_query_sees() -> None:
    model = make(positional_embedding_type="rotary", sliding_window=4)
    _, cache = model.run_with_cache(tokens())
    pattern = cache["pattern", 0]  # [b, h, q, k]
    q = torch.arange(12)[:, None]
    k = torch.arange(12)[None, :]
    outside = (q - k >= 4) | (k > q)
    assert pattern[..., outside].abs().max() == 0
    assert (pattern.sum(-1) - 1).abs().max() <= 1e-6
    # The fused path applies the same window as the explicit one.
    assert (model(tokens()) - cache["unembed.hook_out"]).abs().max() <= 1e-5


def test_window_only_on_sliding_layers() -> None:
    types = ["full_attention", "sliding_attention"]
    model = make(positional_embedding_type="rotary", sliding_window=3, layer_types=types)
    _, cache = model.run_with_cache(tokens())
    assert cache["pattern", 0][..., -1, 0].abs().min() > 0  # full attention reaches back
    assert cache["pattern", 1][..., -1, :9].abs().max() == 0


def test_window_wider_than_the_sequence_changes_nothing() -> None:
    wide = make(positional_embedding_type="rotary", sliding_window=64)
    full = make(positional_embedding_type="rotary")
    full.load_state_dict(wide.state_dict())
    assert torch.equal(wide(tokens()), full(tokens()))


def test_adjacent_pair_rotary_is_half_split_rotary_on_permuted_features() -> None:
    from anatomist.model.positions import Rotary

    cfg_pairs = anatomist.TransformerConfig(
        n_layers=1, d_model=16, n_ctx=16, d_head=8, d_vocab=5, rotary_dim=6,
        positional_embedding_type="rotary", rotary_adjacent_pairs=True,
    )  # fmt: skip
    cfg_halves = anatomist.TransformerConfig(
        n_layers=1, d_model=16, n_ctx=16, d_head=8, d_vocab=5, rotary_dim=6,
        positional_embedding_type="rotary",
    )  # fmt: skip
    x = torch.randn(2, 5, 3, 8)
    positions = torch.arange(5)[None].expand(2, -1)
    pairs, halves = Rotary(cfg_pairs), Rotary(cfg_halves)
    # Feature order that turns pairs (0,1),(2,3),(4,5) into halves (0,2,4 | 1,3,5).
    order = torch.tensor([0, 2, 4, 1, 3, 5, 6, 7])
    rotated_pairs = pairs(x, *pairs.cos_sin(positions, x.dtype))
    rotated_halves = halves(x[..., order], *halves.cos_sin(positions, x.dtype))
    assert torch.allclose(rotated_pairs[..., order], rotated_halves, atol=1e-6)
    assert torch.equal(rotated_pairs[..., 6:], x[..., 6:])  # beyond rotary_dim: untouched


def test_qk_norm_normalizes_each_head() -> None:
    model = make(positional_embedding_type="rotary", qk_norm=True, normalization_type="RMS")
    with torch.no_grad():
        model.blocks[0].attn.q_norm.w.fill_(1.0)
    _, cache = model.run_with_cache(tokens())
    q = cache["blocks.0.attn.hook_q"]
    normalized = cache["blocks.0.attn.q_norm.hook_normalized"]
    expected = q / (q.pow(2).mean(-1, keepdim=True) + model.cfg.eps).sqrt()
    assert (normalized - expected).abs().max() <= 1e-5
    assert "blocks.1.attn.k_norm.hook_scale" in cache


def test_embed_scale() -> None:
    model = make(embed_scale=4.0, positional_embedding_type="rotary")
    toks = tokens()
    _, cache = model.run_with_cache(toks)
    assert torch.allclose(cache["hook_embed"], model.W_E[toks] * 4.0)
