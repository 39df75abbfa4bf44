"""Attribution patching equals the first-order Taylor term, computed here from its definition."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from anatomist.analysis import patching
from anatomist.analysis.attribution import attribution_patch
from anatomist.utils import get_act_name
from tests.analysis.metrics import logit_diff
from tests.helpers import BUILDERS

COMPONENTS = (
    "resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z", "result", "q", "k", "v",
    "pattern", "post",
)  # fmt: skip


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def setup(request: Any) -> tuple[Any, torch.Tensor, torch.Tensor, Any]:
    model = BUILDERS[request.param]()
    model.set_use_attn_result(True)
    gen = torch.Generator().manual_seed(5)
    clean = torch.randint(0, model.cfg.d_vocab, (2, 4), generator=gen)
    corrupted = torch.randint(0, model.cfg.d_vocab, (2, 4), generator=gen)
    _, clean_cache = model.run_with_cache(clean)
    return model, clean, corrupted, clean_cache


def taylor_term(
    model: Any, corrupted: torch.Tensor, clean_cache: Any, component: str
) -> torch.Tensor:
    """d/d(alpha) metric(corrupted run with a -> a + alpha * (a_clean - a)) at alpha = 0, with
    one alpha per cell (per position, or per position and head, or per pattern entry), shared
    over the batch and the feature axis: the definition of the linear approximation."""
    rows = []
    for layer in range(model.cfg.n_layers):
        name = get_act_name(component, layer=layer)
        clean = clean_cache[name]
        per_entry = component == "pattern"
        alpha = torch.zeros(clean.shape[1:] if per_entry else clean.shape[1:-1], requires_grad=True)
        step = alpha if per_entry else alpha.unsqueeze(-1)

        def move(
            act: torch.Tensor, hook: Any, step: torch.Tensor = step, clean: torch.Tensor = clean
        ) -> torch.Tensor:
            return act + step * (clean - act.detach())

        logits = model.run_with_hooks(corrupted, fwd_hooks=[(name, move)])
        (grad,) = torch.autograd.grad(logit_diff(logits), alpha)
        rows.append(grad)
    return torch.stack(rows)


def test_scores_equal_the_first_order_taylor_term(setup: Any) -> None:
    model, _, corrupted, clean_cache = setup
    scores = attribution_patch(model, corrupted, clean_cache, logit_diff, COMPONENTS)
    cfg = model.cfg
    assert scores["resid_pre"].shape == (cfg.n_layers, 4)
    assert scores["z"].shape == (cfg.n_layers, 4, cfg.n_heads)
    assert scores["k"].shape == (cfg.n_layers, 4, cfg.n_key_value_heads)
    assert scores["pattern"].shape == (cfg.n_layers, cfg.n_heads, 4, 4)
    for component in COMPONENTS:
        expected = taylor_term(model, corrupted, clean_cache, component)
        torch.testing.assert_close(scores[component], expected, atol=1e-5, rtol=1e-4)
        assert expected.abs().max() > 1e-3, component  # a test that can fail
    # result = z @ W_O is linear, so the head-output scores agree either way.
    torch.testing.assert_close(scores["result"], scores["z"], atol=1e-5, rtol=1e-4)


def test_clean_tokens_frozen_weights_and_no_side_effects(setup: Any) -> None:
    model, clean, corrupted, clean_cache = setup
    reference = attribution_patch(model, corrupted, clean_cache, logit_diff, ("q", "mlp_out"))
    from_tokens = attribution_patch(model, corrupted, clean, logit_diff, ("q", "mlp_out"))
    for key in reference:
        torch.testing.assert_close(from_tokens[key], reference[key])
    assert all(p.grad is None for p in model.parameters())  # parameter grads untouched

    flags = [p.requires_grad for p in model.parameters()]
    try:
        for p in model.parameters():
            p.requires_grad_(False)
        frozen = attribution_patch(model, corrupted, clean_cache, logit_diff, ("q", "mlp_out"))
    finally:
        for p, flag in zip(model.parameters(), flags):
            p.requires_grad_(flag)
    for key in reference:
        torch.testing.assert_close(frozen[key], reference[key])


@pytest.mark.parametrize("family", sorted(BUILDERS))
def test_approximates_activation_patching_for_small_differences(family: str) -> None:
    """With 'clean' activations a small step d off the corrupted ones, attribution patching
    equals the activation-patching effect to first order. The central difference
    (patch(+d) - patch(-d)) / 2 cancels the second-order term, leaving O(|d|^3) (float64 model,
    so that float error does not hide it)."""
    model = BUILDERS[family]().double()
    corrupted = torch.randint(
        0, model.cfg.d_vocab, (2, 4), generator=torch.Generator().manual_seed(7)
    )
    _, corrupted_cache = model.run_with_cache(corrupted)
    gen = torch.Generator().manual_seed(6)
    step = {
        name: 1e-3 * torch.randn(act.shape, generator=gen, dtype=act.dtype)
        for name, act in corrupted_cache.items()
    }
    plus = {name: act + step[name] for name, act in corrupted_cache.items()}
    minus = {name: act - step[name] for name, act in corrupted_cache.items()}
    for component, preset in [
        ("resid_pre", patching.get_act_patch_resid_pre),
        ("z", patching.get_act_patch_attn_head_out_by_pos),
        ("pattern", patching.get_act_patch_attn_head_pattern_dest_src_pos),
    ]:
        kw: dict[str, Any] = dict(progress=False, batch_size=256)
        effect = (
            preset(model, corrupted, plus, logit_diff, **kw).double()
            - preset(model, corrupted, minus, logit_diff, **kw).double()
        ) / 2
        scores = attribution_patch(model, corrupted, plus, logit_diff, (component,))[component]
        assert effect.abs().max() > 1e-5
        # atol: the patching result is float32, so differences of values near 1 carry ~1e-7.
        torch.testing.assert_close(scores, effect, atol=1e-6, rtol=1e-2)


def test_errors(setup: Any) -> None:
    model, _, corrupted, clean_cache = setup
    with pytest.raises(ValueError, match="differentiable scalar"):
        attribution_patch(model, corrupted, clean_cache, lambda logits: logits[:, -1, 0], ("q",))
    with pytest.raises(KeyError, match="hook_nope"):
        attribution_patch(model, corrupted, clean_cache, logit_diff, ("nope",))
