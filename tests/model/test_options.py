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


def test_soft_caps_bound_scores_and_logits() -> None:
    model = make(attn_scores_soft_cap=2.0, output_logits_soft_cap=3.0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(20)  # large weights push raw scores and logits far past the caps
    logits, cache = model.run_with_cache(tokens())
    assert 2.5 < logits.abs().max() <= 3.0  # tanh saturates to exactly the cap in float32
    q, k = cache["blocks.0.attn.hook_q"], cache["blocks.0.attn.hook_k"]
    raw = torch.einsum("bqhe,bkhe->bhqk", q, k) / model.cfg.attn_scale
    causal = torch.ones(12, 12, dtype=torch.bool).tril()
    expected = 2.0 * torch.tanh(raw / 2.0)
    assert (cache["attn_scores", 0][..., causal] - expected[..., causal]).abs().max() <= 1e-4
    # Soft-capped scores cannot go through the fused kernel: same logits without hooks (up to
    # float error, which the x20 weights amplify; a missing cap would differ by O(1)).
    assert (model(tokens()) - logits).abs().max() <= 1e-3


def test_post_norms_and_no_pre_norms() -> None:
    model = make(normalization_type="RMS", post_norm_type="RMS", pre_norm=False)
    assert isinstance(model.blocks[0].ln1, torch.nn.Identity)
    _, cache = model.run_with_cache(tokens())
    attn = model.blocks[0].attn
    z = cache["blocks.0.attn.hook_z"]
    before_norm = torch.einsum("bphe,hed->bpd", z, attn.W_O) + attn.b_O
    expected = model.blocks[0].ln1_post(before_norm)
    assert (cache["attn_out", 0] - expected).abs().max() <= 1e-5
    assert "blocks.0.ln2_post.hook_scale" in cache
    # Processing folds only the final norm; the post-norms keep their weights.
    reference = model(tokens()).log_softmax(-1)
    model.process_weights_()
    assert model.cfg.normalization_type == "RMSPre"
    assert isinstance(model.blocks[0].ln1_post.w, torch.nn.Parameter)
    assert (model(tokens()).log_softmax(-1) - reference).abs().max() <= 1e-4


def test_local_layers_use_their_own_rope_base() -> None:
    from anatomist.model.positions import rotary_inverse_frequencies

    cfg = anatomist.TransformerConfig(
        n_layers=2, d_model=32, n_ctx=32, d_head=8, d_vocab=50, positional_embedding_type="rotary",
        rotary_base=1e6, rotary_base_local=1e4, sliding_window=4,
        layer_types=["sliding_attention", "full_attention"],
        rope_scaling={"rope_type": "linear", "factor": 8.0},
    )  # fmt: skip
    model = anatomist.HookedTransformer(cfg)
    local, glob = (block.attn.rotary.inv_freq for block in model.blocks)
    assert torch.allclose(local, 1.0 / 1e4 ** (torch.arange(0, 8, 2).float() / 8))
    assert torch.allclose(glob, rotary_inverse_frequencies(cfg))
    assert torch.allclose(glob, 1.0 / 1e6 ** (torch.arange(0, 8, 2).float() / 8) / 8.0)


def test_non_causal_attention_sees_the_future() -> None:
    model = make(causal=False, positional_embedding_type="rotary")
    logits, cache = model.run_with_cache(tokens())
    assert cache["pattern", 0][..., 0, -1].abs().min() > 0  # first query sees the last key
    assert (model(tokens()) - logits).abs().max() <= 1e-5  # fused path agrees


def test_property_errors_keep_their_explanation() -> None:
    import pytest

    model = make(positional_embedding_type="rotary")
    with pytest.raises(AttributeError, match="rotary positions"):
        _ = model.W_pos
    with pytest.raises(AttributeError, match="attention-only"):
        _ = make(attn_only=True).W_in


def test_n_params_counts_every_expert() -> None:
    dense = anatomist.TransformerConfig(n_layers=2, d_model=8, n_ctx=4, d_head=4, d_vocab=5,
                                        d_mlp=16, gated_mlp=True, act_fn="silu")  # fmt: skip
    moe = anatomist.TransformerConfig(n_layers=2, d_model=8, n_ctx=4, d_head=4, d_vocab=5,
                                      d_mlp=16, gated_mlp=True, act_fn="silu", num_experts=4,
                                      experts_per_token=2)  # fmt: skip
    # Per layer: W_Q, W_K, W_V, W_O are 2 heads x 8 x 4 each; a gated MLP is 3 x 8 x 16.
    assert dense.n_params == 2 * (4 * 2 * 8 * 4 + 3 * 8 * 16)
    # Three more experts per layer, and a router of 8 x 4.
    assert moe.n_params - dense.n_params == 2 * (3 * 8 * 16 * 3 + 8 * 4)
