"""The two attention paths: fused (``scaled_dot_product_attention``) and explicit.

Attention runs fused unless something needs the scores or the pattern; then the explicit path
runs, for that layer only (docs/hooks.md). Both must compute the same thing, with any mask, and a
hook on one layer must switch only that layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

import anatomist
from anatomist.model import attention as attention_module
from anatomist.model.attention import Attention
from tests.helpers import random_tokens, randomize_small_params

VOCAB, SEQ = 50, 10


def decoder(**options: Any) -> anatomist.HookedTransformer:
    settings: dict[str, Any] = dict(
        n_layers=3, d_model=32, n_ctx=32, d_head=8, d_vocab=VOCAB, act_fn="gelu", seed=0
    )
    settings.update(options)
    model = anatomist.HookedTransformer(anatomist.TransformerConfig(**settings))
    randomize_small_params(model)
    if model.cfg.attn_sinks:
        gen = torch.Generator().manual_seed(7)
        with torch.no_grad():
            for block in model.blocks:
                block.attn.sinks.copy_(torch.randn(block.attn.sinks.shape, generator=gen))
    return model.eval()


def encoder() -> anatomist.HookedEncoder:
    cfg = anatomist.TransformerConfig(
        n_layers=3, d_model=32, n_ctx=32, d_head=8, d_vocab=VOCAB, act_fn="gelu", seed=0
    )
    model = anatomist.HookedEncoder(cfg)
    randomize_small_params(model)
    return model.eval()


ROTARY = dict(positional_embedding_type="rotary", normalization_type="RMS", act_fn="silu")
MODELS: dict[str, Callable[[], Any]] = {
    "mha": decoder,
    "gqa": lambda: decoder(n_key_value_heads=2, gated_mlp=True, **ROTARY),
    "mqa": lambda: decoder(n_key_value_heads=1, **ROTARY),
    "alibi": lambda: decoder(positional_embedding_type="alibi", n_heads=4),
    "sliding-window": lambda: decoder(sliding_window=3, **ROTARY),
    "sinks": lambda: decoder(attn_sinks=True, n_key_value_heads=2, **ROTARY),
    "encoder": encoder,
}


def masks(side: str) -> torch.Tensor | None:
    """A ``[2, SEQ]`` attention mask: none, left or right padding, or holes inside the rows."""
    if side == "none":
        return None
    mask = torch.ones(2, SEQ, dtype=torch.long)
    if side == "left":
        mask[0, :4] = 0
    elif side == "right":
        mask[1, 6:] = 0
    else:  # holes: padding tokens in the middle of a row (a packed or edited batch)
        mask[0, [2, 5, 6]] = 0
        mask[1, [0, 8]] = 0
    return mask


def forward(model: Any, tokens: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if isinstance(model, anatomist.HookedEncoder):
        return model(tokens, one_zero_attention_mask=mask)
    return model(tokens, attention_mask=mask)


def is_pattern(name: str) -> bool:
    return name.endswith("hook_pattern")


@pytest.mark.parametrize("side", ["none", "left", "right", "holes"])
@pytest.mark.parametrize("kind", list(MODELS))
def test_fused_and_explicit_paths_agree(kind: str, side: str) -> None:
    model = MODELS[kind]()
    tokens = random_tokens(VOCAB, 2, SEQ)
    mask = masks(side)
    explicit_layers: list[int] = []

    def record(pattern: torch.Tensor, hook: Any) -> None:
        explicit_layers.append(int(hook.name.split(".")[1]))

    fused = forward(model, tokens, mask)
    assert not explicit_layers
    with model.hooks(fwd_hooks=[(is_pattern, record)]):
        explicit = forward(model, tokens, mask)
    assert explicit_layers == list(range(model.cfg.n_layers))  # the hooks forced the path
    real = torch.ones(2, SEQ, dtype=torch.bool) if mask is None else mask.bool()
    assert (fused[real] - explicit[real]).abs().max() <= 1e-5


def test_soft_capped_scores_take_the_explicit_path_only(monkeypatch: pytest.MonkeyPatch) -> None:
    """Soft-capped scores (Gemma 2) cannot be fused: there is no second path to compare."""
    model = decoder(attn_scores_soft_cap=2.0, **ROTARY)
    calls = spy_paths(monkeypatch)
    model(random_tokens(VOCAB, 2, SEQ))
    assert calls == {"sdpa": 0, "explicit": [0, 1, 2]}


def spy_paths(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Count fused calls and record the layer index of every explicit one."""
    calls: dict[str, Any] = {"sdpa": 0, "explicit": []}
    sdpa = attention_module.F.scaled_dot_product_attention
    explicit = Attention._explicit_attention

    def counting_sdpa(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls["sdpa"] += 1
        return sdpa(*args, **kwargs)

    def recording_explicit(self: Attention, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls["explicit"].append(self.layer_idx)
        return explicit(self, *args, **kwargs)

    monkeypatch.setattr(attention_module.F, "scaled_dot_product_attention", counting_sdpa)
    monkeypatch.setattr(Attention, "_explicit_attention", recording_explicit)
    return calls


@pytest.mark.parametrize("hook", ["hook_pattern", "hook_attn_scores"])
@pytest.mark.parametrize("layer", [0, 2])
def test_one_hooked_layer_switches_only_that_layer(
    hook: str, layer: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = decoder(n_key_value_heads=2, **ROTARY)
    tokens = random_tokens(VOCAB, 2, SEQ)
    calls = spy_paths(monkeypatch)
    model(tokens)
    assert calls == {"sdpa": 3, "explicit": []}

    calls.update(sdpa=0, explicit=[])
    seen: list[torch.Tensor] = []
    model.run_with_hooks(
        tokens, fwd_hooks=[(f"blocks.{layer}.attn.{hook}", lambda t, hook: seen.append(t))]
    )
    assert len(seen) == 1
    assert calls == {"sdpa": 2, "explicit": [layer]}


@pytest.mark.parametrize("layer", [0, 1])
def test_run_with_cache_of_one_pattern_switches_only_that_layer(
    layer: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = decoder(positional_embedding_type="alibi", n_heads=4)
    tokens = random_tokens(VOCAB, 2, SEQ)
    calls = spy_paths(monkeypatch)
    name = f"blocks.{layer}.attn.hook_pattern"
    logits, cache = model.run_with_cache(tokens, names_filter=name)
    assert list(cache.keys()) == [name]
    assert calls == {"sdpa": 2, "explicit": [layer]}
    assert (logits - model(tokens)).abs().max() <= 1e-5
    # Nothing cached, nothing explicit.
    calls.update(sdpa=0, explicit=[])
    model.run_with_cache(tokens, names_filter=lambda n: n.endswith("hook_resid_post"))
    assert calls == {"sdpa": 3, "explicit": []}


@pytest.mark.parametrize("side", ["none", "holes"])
@pytest.mark.parametrize("kind", ["mha", "gqa", "mqa"])
def test_explicit_scores_are_q_dot_k_and_lowest_where_masked(kind: str, side: str) -> None:
    """hook_attn_scores holds q.k / attn_scale where a query may attend (query head h reading key
    head h // group) and exactly the float32 minimum where it may not, as the classic masking
    did; the pattern is their softmax."""
    model = MODELS[kind]()
    mask = masks(side)
    _, cache = model.run_with_cache(
        random_tokens(VOCAB, 2, SEQ),
        names_filter=lambda n: (
            n.endswith(("hook_q", "hook_k", "rot_q", "rot_k", "scores"))
            or n.endswith("hook_pattern")
        ),
        **({} if mask is None else {"attention_mask": mask}),
    )
    cfg = model.cfg
    allowed = torch.ones(SEQ, SEQ, dtype=torch.bool).tril()[None, None]
    if mask is not None:
        allowed = allowed & mask.bool()[:, None, None, :]
        # A query with no key to read (the first token, padded) is the model's to define.
        allowed = allowed | ~allowed.any(-1, keepdim=True)
    for layer in range(cfg.n_layers):
        rotary = f"blocks.{layer}.attn.hook_rot_q" in cache
        q = cache[f"blocks.{layer}.attn.hook_{'rot_q' if rotary else 'q'}"]  # [b, p, h, dh]
        k = cache[f"blocks.{layer}.attn.hook_{'rot_k' if rotary else 'k'}"]  # [b, p, kv, dh]
        k = k.repeat_interleave(cfg.n_heads // k.shape[2], dim=2)
        expected = torch.einsum("bqhd,bkhd->bhqk", q, k) / cfg.attn_scale
        scores = cache[f"blocks.{layer}.attn.hook_attn_scores"]
        allowed_here = allowed.expand_as(scores)
        torch.testing.assert_close(scores[allowed_here], expected[allowed_here])
        assert (scores[~allowed_here] == torch.finfo(torch.float32).min).all()
        pattern = cache[f"blocks.{layer}.attn.hook_pattern"]
        torch.testing.assert_close(pattern, torch.softmax(scores, dim=-1))
