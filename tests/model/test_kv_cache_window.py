"""Sliding-window layers keep only the last ``window - 1`` keys in the KV cache
(model/kv_cache.py): cached runs still equal the full forward and Hugging Face, padded or not,
one token or several per step, and the entries stay at the window however long the run."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import torch

import anatomist
from anatomist.model.kv_cache import KVCache, KVCacheEntry
from tests.families.cases import gemma2, gpt_oss, mistral
from tests.families.parity import generation_pair
from tests.helpers import hf_logits

CASES = {
    "mistral-window4-gqa": mistral.CASES["window-gqa"],  # every layer windowed
    "gemma2-window4-soft-capped": gemma2.CASES["soft-capped-windowed"],  # local/global, explicit
    "gpt-oss-window4-sinks": gpt_oss.CASES["top2-of-4-gqa-window-yarn"],  # sinks, fused path
}
PROMPT = 11  # longer than every case's window (4)
STEPS = 9


@pytest.fixture(scope="module", params=list(CASES))
def pair(request: Any, tmp_path_factory: Any) -> tuple[Any, anatomist.HookedTransformer]:
    return generation_pair(CASES[request.param], tmp_path_factory.mktemp(request.param))


def _tokens(vocab: int, batch: int = 2, pos: int = PROMPT + STEPS, seed: int = 7) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, pos), generator=torch.Generator().manual_seed(seed))


def _left_padded(vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Three rows with 0, 3 and 8 leading pads (the last keeps fewer real prompt tokens than
    the window), and their mask."""
    tokens = _tokens(vocab, batch=3)
    mask = torch.ones_like(tokens)
    for row, pads in enumerate((0, 3, 8)):
        mask[row, :pads] = 0
        tokens[row, :pads] = 0
    return tokens, mask


def _windows(model: anatomist.HookedTransformer) -> list[int | None]:
    return [model.cfg.window_for_layer(i) for i in range(model.cfg.n_layers)]


def _check_entries(model: anatomist.HookedTransformer, cache: KVCache) -> None:
    """Windowed entries hold at most window - 1 keys (and little more memory); others all."""
    for entry, window in zip(cache.entries, _windows(model), strict=True):
        if window is None:
            assert entry.length == cache.length
            continue
        assert entry.length == min(cache.length, window - 1)
        assert entry.past_keys.shape[1] == entry.length
        # The buffer behind the keys: room for a window plus a step, not the whole sequence.
        per_key = entry.keys[:, :, :1].numel() * entry.keys.element_size()
        assert entry.keys.untyped_storage().nbytes() <= per_key * (3 * window + 8)


def _steps(
    model: anatomist.HookedTransformer,
    tokens: torch.Tensor,
    mask: torch.Tensor | None,
    sizes: list[int],
) -> Iterator[tuple[int, torch.Tensor, KVCache]]:
    """Feed `tokens` to a cache in steps of `sizes` tokens: yields (end, logits, cache)."""
    cache = KVCache.init_cache(model.cfg, batch_size=tokens.shape[0])
    start = 0
    for size in sizes:
        end = start + size
        step_mask = None if mask is None else mask[:, start:end]
        logits = model(tokens[:, start:end], attention_mask=step_mask, past_kv_cache=cache)
        yield end, logits, cache
        start = end


def test_cached_steps_equal_the_full_forward_and_hugging_face(pair: Any) -> None:
    hf, model = pair
    tokens = _tokens(model.cfg.d_vocab)
    full = model(tokens)
    theirs = hf_logits(hf, tokens)
    assert (full - theirs).abs().max() <= 1e-5
    windows = [w for w in _windows(model) if w is not None]
    assert windows and max(windows) < PROMPT
    for end, logits, cache in _steps(model, tokens, None, [PROMPT] + [1] * STEPS):
        new = logits.shape[1]
        assert (logits - full[:, end - new : end]).abs().max() <= 1e-5
        assert (logits - theirs[:, end - new : end]).abs().max() <= 1e-5
        _check_entries(model, cache)


def test_left_padded_cached_steps_equal_the_full_forward_and_hugging_face(pair: Any) -> None:
    hf, model = pair
    tokens, mask = _left_padded(model.cfg.d_vocab)
    full = model(tokens, attention_mask=mask)
    position_ids = (mask.cumsum(-1) - 1).clamp(min=0)
    theirs = hf_logits(hf, tokens, attention_mask=mask, position_ids=position_ids)
    real = mask.bool()
    assert (full - theirs)[real].abs().max() <= 1e-5
    for end, logits, cache in _steps(model, tokens, mask, [PROMPT] + [1] * STEPS):
        new = logits.shape[1]
        step_real = real[:, end - new : end]
        assert (logits - full[:, end - new : end])[step_real].abs().max() <= 1e-5
        assert (logits - theirs[:, end - new : end])[step_real].abs().max() <= 1e-5
        _check_entries(model, cache)


@pytest.mark.parametrize("padded", [False, True], ids=["unpadded", "left-padded"])
def test_several_tokens_per_cached_step_equal_the_full_forward(pair: Any, padded: bool) -> None:
    _, model = pair
    tokens, mask = _left_padded(model.cfg.d_vocab)
    if not padded:
        mask = torch.ones_like(mask)
    full = model(tokens, attention_mask=mask)
    real = mask.bool()
    # Steps longer than, equal to and shorter than the window, after a long prompt.
    for end, logits, cache in _steps(model, tokens, mask, [PROMPT, 3, 1, 4, 1]):
        new = logits.shape[1]
        step_real = real[:, end - new : end]
        assert (logits - full[:, end - new : end])[step_real].abs().max() <= 1e-5
        _check_entries(model, cache)


def test_greedy_generation_matches_hugging_face_padded_and_not(pair: Any) -> None:
    hf, model = pair
    tokens, mask = _left_padded(model.cfg.d_vocab)
    tokens, mask = tokens[:, :PROMPT], mask[:, :PROMPT]
    for m in (torch.ones_like(mask), mask):
        with torch.no_grad():
            expected = hf.generate(tokens, attention_mask=m, max_new_tokens=20, do_sample=False)
        ours = model.generate(
            tokens,
            attention_mask=m,
            max_new_tokens=20,
            do_sample=False,
            stop_at_eos=False,
            verbose=False,
        )
        assert torch.equal(ours, expected)


def test_hooks_on_the_pattern_of_a_windowed_cached_step_see_the_kept_keys() -> None:
    model = anatomist.HookedTransformer(
        anatomist.TransformerConfig(
            n_layers=1,
            d_model=16,
            n_ctx=32,
            d_head=4,
            n_heads=4,
            d_vocab=20,
            act_fn="silu",
            positional_embedding_type="rotary",
            sliding_window=5,
            seed=0,
        )
    )
    tokens = _tokens(20, pos=12)
    full_pattern: list[torch.Tensor] = []
    step_pattern: list[torch.Tensor] = []
    model.run_with_hooks(
        tokens,
        fwd_hooks=[("blocks.0.attn.hook_pattern", lambda x, hook: full_pattern.append(x))],
    )
    cache = KVCache.init_cache(model.cfg, batch_size=2)
    model(tokens[:, :11], past_kv_cache=cache)
    model.run_with_hooks(
        tokens[:, 11:],
        past_kv_cache=cache,
        fwd_hooks=[("blocks.0.attn.hook_pattern", lambda x, hook: step_pattern.append(x))],
    )
    (step,), (full,) = step_pattern, full_pattern
    assert step.shape == (2, 4, 1, 5)  # the 4 kept keys and the new one
    torch.testing.assert_close(step[:, :, 0], full[:, :, -1, -5:], atol=1e-6, rtol=0)
    assert full[:, :, -1, :-5].abs().max() == 0  # nothing outside the window was dropped


def _tiny_windowed(window: int | None = 4) -> anatomist.HookedTransformer:
    cfg = anatomist.TransformerConfig(
        n_layers=2,
        d_model=16,
        n_ctx=64,
        d_head=4,
        n_heads=4,
        n_key_value_heads=2,
        d_vocab=30,
        act_fn="silu",
        positional_embedding_type="rotary",
        sliding_window=window,
        seed=0,
    )
    return anatomist.HookedTransformer(cfg)


def test_clone_and_freeze_of_a_windowed_cache() -> None:
    model = _tiny_windowed()
    tokens = _tokens(30, pos=14)
    full = model(tokens)
    cache = KVCache.init_cache(model.cfg, batch_size=2)
    model(tokens[:, :10], past_kv_cache=cache)
    copy = cache.clone()
    # The original goes on with the real tokens; the copy first with other ones.
    other = (tokens[:, 10:12] + 1) % 30
    model(other, past_kv_cache=copy)
    step = model(tokens[:, 10:12], past_kv_cache=cache)
    assert (step - full[:, 10:12]).abs().max() <= 1e-5
    cache.freeze()
    kept = [e.keys for e in cache.entries]
    for _ in range(2):  # a frozen cache answers the same step the same way and keeps its keys
        again = model(tokens[:, 12:13], past_kv_cache=cache)
        assert (again - full[:, 12:13]).abs().max() <= 1e-5
    assert all(torch.equal(a, e.keys) for a, e in zip(kept, cache.entries, strict=True))
    assert cache.length == 12 and all(e.length == 3 for e in cache.entries)
    # The copy saw other tokens at 10..11: it differs from the full run at 12.
    assert (model(tokens[:, 12:13], past_kv_cache=copy) - full[:, 12:13]).abs().max() > 1e-3


def test_entries_without_a_window_keep_every_key_and_still_compute_the_windowed_model() -> None:
    """Classic entries built by hand know no window: they keep every key, and attention masks
    the keys outside the window itself."""
    model = _tiny_windowed()
    tokens = _tokens(30, pos=12)
    full = model(tokens)
    entries = [KVCacheEntry.init_cache_entry(model.cfg, "cpu", 2) for _ in range(2)]
    cache = KVCache(entries, torch.zeros(2, 0, dtype=torch.long))
    model(tokens[:, :8], past_kv_cache=cache)
    for i in range(8, 12):
        step = model(tokens[:, i : i + 1], past_kv_cache=cache)
        assert (step - full[:, i : i + 1]).abs().max() <= 1e-5
    assert all(e.length == 12 for e in cache.entries)


def test_tensors_read_from_an_entry_never_change_afterwards() -> None:
    """Steps write new keys into spare room of a buffer, never over keys someone holds."""
    model = _tiny_windowed(window=3)
    for m in (model, _tiny_windowed(window=None)):
        cache = KVCache.init_cache(m.cfg, batch_size=2)
        tokens = _tokens(30, pos=40)
        m(tokens[:, :5], past_kv_cache=cache)
        held = [(e.past_keys, e.past_keys.clone(), e.values, e.values.clone()) for e in cache]
        for i in range(5, 40):
            m(tokens[:, i : i + 1], past_kv_cache=cache)
        for keys, keys_then, values, values_then in held:
            assert torch.equal(keys, keys_then) and torch.equal(values, values_then)


def test_gradients_flow_through_a_cached_run() -> None:
    """With autograd on, steps concatenate instead of writing into a buffer autograd saved."""
    model = _tiny_windowed()
    tokens = _tokens(30, pos=9)
    cache = KVCache.init_cache(model.cfg, batch_size=2)
    model(tokens[:, :6], past_kv_cache=cache)
    loss = sum(model(tokens[:, i : i + 1], past_kv_cache=cache).sum() for i in range(6, 9))
    assert isinstance(loss, torch.Tensor)
    loss.backward()
    assert model.blocks[0].attn.W_Q.grad is not None
