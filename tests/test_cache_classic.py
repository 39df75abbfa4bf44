"""ActivationCache's classic odds and ends: batch-dim errors and warnings, toggle_autodiff, and
`project_output_onto` of the neuron and full decompositions, checked against hand computations
from the cached activations."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import Tensor

import anatomist
from anatomist.cache import CacheBatchDimError
from tests.helpers import gpt2_like, llama_like


def tokens(batch: int = 2, pos: int = 6) -> Tensor:
    return torch.randint(0, 50, (batch, pos), generator=torch.Generator().manual_seed(3))


def run(model: anatomist.HookedTransformer, batch: int = 2) -> anatomist.ActivationCache:
    return model.run_with_cache(tokens(batch))[1]


def by_hand_neurons(model: anatomist.HookedTransformer, cache: anatomist.ActivationCache) -> Tensor:
    """[layers * d_mlp, batch, pos, d_model]: every neuron's write, post * W_out row."""
    rows = [
        torch.einsum("bpn,nd->nbpd", cache[f"blocks.{i}.mlp.hook_post"], block.mlp.W_out)
        for i, block in enumerate(model.blocks)
    ]
    return torch.cat(rows)


def final_norm_by_hand(model: anatomist.HookedTransformer, x: Tensor, scale: Tensor) -> Tensor:
    """ln_final's linear part (no bias) at the cached scale: centred for LayerNorm, / scale, * w."""
    if model.cfg.normalization_type == "LN":
        x = x - x.mean(-1, keepdim=True)
    return x / scale * model.ln_final.w


# --- batch dim, autodiff --------------------------------------------------------------------------


def test_remove_batch_dim_errors_are_value_and_assertion_errors() -> None:
    cache = run(gpt2_like(), batch=2)
    with pytest.raises(ValueError, match="apply_slice_to_batch_dim"):
        cache.remove_batch_dim()
    with pytest.raises(AssertionError):
        cache.remove_batch_dim()
    assert issubclass(CacheBatchDimError, ValueError)


def test_remove_batch_dim_twice_warns(caplog: pytest.LogCaptureFixture) -> None:
    cache = run(gpt2_like(), batch=1).remove_batch_dim()
    shape = cache["hook_embed"].shape
    with caplog.at_level(logging.WARNING):
        assert cache.remove_batch_dim() is cache
    assert "no batch dim" in caplog.text and cache["hook_embed"].shape == shape


def test_apply_slice_to_batch_dim_without_batch_dim() -> None:
    cache = run(gpt2_like(), batch=1).remove_batch_dim()
    same = cache.apply_slice_to_batch_dim(None)
    assert not same.has_batch_dim and same is not cache
    assert torch.equal(same["hook_embed"], cache["hook_embed"])
    with pytest.raises(CacheBatchDimError, match="no batch dim"):
        cache.apply_slice_to_batch_dim(0)


def test_toggle_autodiff_sets_the_global_grad_mode(caplog: pytest.LogCaptureFixture) -> None:
    cache = run(gpt2_like())
    try:
        with caplog.at_level(logging.WARNING):
            cache.toggle_autodiff(False)
        assert not torch.is_grad_enabled() and "autodiff" in caplog.text
        cache.toggle_autodiff(True)
        assert torch.is_grad_enabled()
    finally:
        torch.set_grad_enabled(True)


# --- project_output_onto --------------------------------------------------------------------------


def test_get_neuron_results_projected_onto_one_and_several_directions() -> None:
    model = gpt2_like()
    cache = run(model)
    p = torch.randn(model.cfg.d_model, 3, generator=torch.Generator().manual_seed(0))
    writes = torch.einsum(
        "bpn,nd->bpnd", cache["blocks.1.mlp.hook_post"], model.blocks[1].mlp.W_out
    )
    torch.testing.assert_close(cache.get_neuron_results(1, project_output_onto=p), writes @ p)
    one = cache.get_neuron_results(1, neuron_slice=5, pos_slice=-1, project_output_onto=p[:, 0])
    torch.testing.assert_close(one, writes[:, -1, 5] @ p[:, 0])
    with pytest.raises(ValueError, match="project_output_onto"):
        cache.get_neuron_results(1, project_output_onto=torch.ones(model.cfg.d_model + 1))


@pytest.mark.parametrize("build", [gpt2_like, llama_like])
def test_stack_neuron_results_projected_with_ln_by_hand(build: object) -> None:
    model = build()  # type: ignore[operator]
    cache = run(model)
    p = torch.randn(model.cfg.d_model, 2, generator=torch.Generator().manual_seed(1))
    scale = cache["ln_final.hook_scale"]
    expected = final_norm_by_hand(model, by_hand_neurons(model, cache), scale) @ p
    stack, labels = cache.stack_neuron_results(
        -1, apply_ln=True, project_output_onto=p, return_labels=True
    )
    assert labels[0] == "L0N0" and len(labels) == stack.shape[0]
    torch.testing.assert_close(stack, expected, rtol=1e-4, atol=1e-5)
    flat = cache.stack_neuron_results(-1, project_output_onto=p[:, 1])
    torch.testing.assert_close(flat, by_hand_neurons(model, cache) @ p[:, 1], rtol=1e-4, atol=1e-5)


def test_stack_neuron_results_projected_remainder_completes_the_stream() -> None:
    model = gpt2_like()
    cache = run(model)
    p = torch.randn(model.cfg.d_model, 2, generator=torch.Generator().manual_seed(2))
    stack = cache.stack_neuron_results(
        -1, apply_ln=True, incl_remainder=True, project_output_onto=p, pos_slice=-1
    )
    # Rows sum to what ln_final wrote, less its bias, projected.
    normalized = cache["ln_final.hook_normalized"][:, -1] - model.ln_final.b
    torch.testing.assert_close(stack.sum(0), normalized @ p, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("apply_ln", [False, True])
def test_full_resid_decomposition_projected_sums_to_the_stream(apply_ln: bool) -> None:
    model = gpt2_like()
    cache = run(model)
    direction = torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(4))
    stack = cache.get_full_resid_decomposition(apply_ln=apply_ln, project_output_onto=direction)
    target = cache["ln_final.hook_normalized"] if apply_ln else cache["blocks.1.hook_resid_post"]
    assert stack.shape[1:] == target.shape[:-1]
    torch.testing.assert_close(stack.sum(0), target @ direction, rtol=1e-4, atol=1e-4)


def test_projected_neuron_stack_never_builds_d_model_rows() -> None:
    from torch.utils._python_dispatch import TorchDispatchMode

    class LargestTensor(TorchDispatchMode):
        def __init__(self) -> None:
            super().__init__()
            self.numel = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            result = func(*args, **(kwargs or {}))
            for t in result if isinstance(result, tuple | list) else (result,):
                if isinstance(t, Tensor):
                    self.numel = max(self.numel, t.numel())
            return result

    cfg = anatomist.TransformerConfig(
        n_layers=2, d_model=64, n_ctx=16, d_head=16, d_vocab=50, act_fn="gelu", seed=0
    )
    model = anatomist.HookedTransformer(cfg)
    cache = model.run_with_cache(torch.randint(0, 50, (4, 8)))[1]
    direction = torch.randn(64)
    with LargestTensor() as full:
        cache.stack_neuron_results(-1, apply_ln=True)
    with LargestTensor() as projected:
        cache.stack_neuron_results(-1, apply_ln=True, project_output_onto=direction)
    rows = 2 * model.cfg.d_mlp * 4 * 8  # neurons x batch x pos
    assert full.numel >= rows * 64
    assert projected.numel <= rows
