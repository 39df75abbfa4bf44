"""The KV cache API (model/kv_cache.py); per-family parity is in tests/families/parity.py."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import anatomist
from anatomist.model.kv_cache import HookedTransformerKeyValueCache, KVCache
from tests.helpers import randomize_small_params


def make(**options: Any) -> anatomist.HookedTransformer:
    settings: dict[str, Any] = dict(
        n_layers=2, d_model=32, n_ctx=16, d_head=8, d_vocab=50, seed=0, act_fn="silu"
    )
    settings.update(options)
    model = anatomist.HookedTransformer(anatomist.TransformerConfig(**settings))
    randomize_small_params(model)
    return model


def tokens(batch: int = 2, pos: int = 10) -> torch.Tensor:
    return torch.randint(0, 50, (batch, pos), generator=torch.Generator().manual_seed(3))


def test_init_cache_is_empty_and_counts_what_it_sees() -> None:
    model = make(positional_embedding_type="rotary", n_key_value_heads=2, n_heads=4)
    cache = HookedTransformerKeyValueCache.init_cache(model.cfg, "cpu", batch_size=2)
    assert isinstance(cache, KVCache)
    assert cache.length == 0 and cache.batch_size == 2 and len(cache.entries) == 2
    assert cache[0].past_keys.shape == (2, 0, 2, 8)  # classic: empty, [b, 0, kv, d_head]
    model(tokens(pos=6), past_kv_cache=cache)
    model(tokens(pos=1), past_kv_cache=cache)
    assert cache.length == 7 and cache.attention_mask.shape == (2, 7)
    assert cache[1].keys is not None and cache[1].keys.shape == (2, 2, 7, 8)  # kv heads only
    past_keys = cache[1].past_keys
    assert past_keys is not None and past_keys.shape == (2, 7, 2, 8)  # classic layout


def test_incremental_logits_equal_the_full_forward() -> None:
    model = make(positional_embedding_type="rotary", sliding_window=3)
    toks = tokens()
    full = model(toks)
    cache = KVCache.init_cache(model.cfg, batch_size=2)
    steps = [model(toks[:, :4], past_kv_cache=cache)]
    steps += [model(toks[:, i : i + 1], past_kv_cache=cache) for i in range(4, 10)]
    assert (torch.cat(steps, dim=1) - full).abs().max() <= 1e-5


def test_hooks_see_the_shapes_of_the_step() -> None:
    model = make(positional_embedding_type="rotary", n_heads=4, n_key_value_heads=2)
    cache = KVCache.init_cache(model.cfg, batch_size=2)
    model(tokens(pos=5), past_kv_cache=cache)
    shapes: dict[str, tuple[int, ...]] = {}

    def record(x: torch.Tensor, hook: anatomist.HookPoint) -> None:
        shapes[hook.name or ""] = tuple(x.shape)

    names = ["hook_k", "hook_rot_k", "hook_attn_scores", "hook_pattern", "hook_q"]
    hooks = [(f"blocks.0.attn.{n}", record) for n in names]
    model.run_with_hooks(tokens(pos=2), past_kv_cache=cache, fwd_hooks=hooks)
    assert shapes["blocks.0.attn.hook_k"] == (2, 2, 2, 8)
    assert shapes["blocks.0.attn.hook_rot_k"] == (2, 2, 2, 8)
    assert shapes["blocks.0.attn.hook_q"] == (2, 2, 4, 8)
    assert shapes["blocks.0.attn.hook_attn_scores"] == (2, 4, 2, 7)
    assert shapes["blocks.0.attn.hook_pattern"] == (2, 4, 2, 7)


def test_frozen_cache_is_read_not_extended_and_clone_is_independent() -> None:
    model = make()
    toks = tokens()
    cache = KVCache.init_cache(model.cfg, batch_size=2)
    model(toks[:, :8], past_kv_cache=cache)
    copy = cache.clone()
    cache.freeze()
    first = model(toks[:, 8:9], past_kv_cache=cache)
    again = model(toks[:, 8:9], past_kv_cache=cache)
    assert cache.length == 8 and cache[0].length == 8
    assert torch.equal(first, again)
    cache.unfreeze()
    model(toks[:, 8:9], past_kv_cache=cache)
    assert cache.length == 9 and copy.length == 8 and copy[0].length == 8
    assert (model(toks[:, 8:9], past_kv_cache=copy) - first).abs().max() <= 1e-6


def test_left_padded_positions_count_real_tokens_only() -> None:
    model = make(positional_embedding_type="standard")
    toks = tokens()
    mask = torch.ones_like(toks)
    mask[0, :4] = 0
    cache = KVCache.init_cache(model.cfg, batch_size=2)
    model(toks[:, :7], attention_mask=mask[:, :7], past_kv_cache=cache)
    step = model(toks[:, 7:8], past_kv_cache=cache)
    alone = model(toks[0:1, 4:8])[0, -1]
    assert (step[0, -1] - alone).abs().max() <= 1e-5


def test_errors() -> None:
    model = make(positional_embedding_type="standard")
    cache = KVCache.init_cache(model.cfg, batch_size=2)
    with pytest.raises(ValueError, match="holds 2 rows"):
        model(tokens(batch=3, pos=4), past_kv_cache=cache)
    with pytest.raises(ValueError, match="new tokens only"):
        model(tokens(pos=4), attention_mask=torch.ones(2, 5), past_kv_cache=cache)
    model(tokens(pos=10), past_kv_cache=cache)
    with pytest.raises(ValueError, match="n_ctx=16"):
        model(tokens(pos=7), past_kv_cache=cache)
    with pytest.raises(NotImplementedError, match="stop_at_layer"):
        model(tokens(pos=1), past_kv_cache=cache, stop_at_layer=1)
    with pytest.raises(TypeError, match="KVCache"):
        model(tokens(pos=1), past_kv_cache=[])
    with pytest.raises(ValueError, match="batch_size"):
        KVCache.init_cache(model.cfg, batch_size=0)
