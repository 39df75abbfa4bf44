"""The cache's analysis names the bad argument: logit_attrs ids, stacks sliced unlike the
cached norm scale."""

from __future__ import annotations

import pytest
import torch

from .state import tiny_model, unchanged


@pytest.fixture(scope="module")
def cached() -> tuple[object, object]:
    model = tiny_model()
    _, cache = model.run_with_cache(torch.tensor([[1, 2, 3, 4]]))
    return model, cache


@pytest.mark.parametrize(
    ("argument", "bad"),
    [("tokens", 37), ("tokens", -1), ("tokens", torch.tensor([5, 40])), ("incorrect_tokens", -2)],
)
def test_logit_attrs_names_an_id_outside_the_vocabulary(cached, argument, bad) -> None:  # type: ignore[no-untyped-def]
    model, cache = cached
    stack, _ = cache.decompose_resid(return_labels=True)
    kwargs = {"tokens": 3, "incorrect_tokens": None}
    kwargs[argument] = bad
    with (
        unchanged(model),
        pytest.raises(ValueError, match=rf"{argument} holds token id .*d_vocab=37"),
    ):
        cache.logit_attrs(stack[:, :, -1], pos_slice=-1, **kwargs)


def test_logit_attrs_refuses_float_ids(cached) -> None:  # type: ignore[no-untyped-def]
    _, cache = cached
    stack = cache.decompose_resid()
    with pytest.raises(TypeError, match="tokens must be token ids"):
        cache.logit_attrs(stack[:, :, -1], tokens=torch.tensor([3.0]), pos_slice=-1)


def test_logit_attrs_of_valid_ids_sum_to_the_logit(cached) -> None:  # type: ignore[no-untyped-def]
    """The check does not change a valid call: attributions sum to the logit less b_U."""
    model, cache = cached
    stack = cache.accumulated_resid()[-1:]  # the final residual stream
    attrs = cache.logit_attrs(stack[:, :, -1], tokens=torch.tensor([7]), pos_slice=-1)
    logits = model(torch.tensor([[1, 2, 3, 4]]))[0, -1, 7]
    assert torch.allclose(attrs[0, 0] + model.b_U[7], logits, atol=1e-4)


def test_a_stack_sliced_unlike_the_scale_is_refused(cached) -> None:  # type: ignore[no-untyped-def]
    """Last positions without pos_slice=-1 would meet every position's scale by broadcasting
    and give four plausible numbers for one token."""
    model, cache = cached
    stack = cache.accumulated_resid()
    with unchanged(model), pytest.raises(ValueError, match=r"residual_stack .*pos_slice=-1"):
        cache.logit_attrs(stack[:, :, -1], tokens=torch.tensor([7]))
    with pytest.raises(ValueError, match="residual_stack"):
        cache.apply_ln_to_stack(stack[:, :, :2])


def test_ids_that_do_not_match_the_stack_are_refused(cached) -> None:  # type: ignore[no-untyped-def]
    model, cache = cached
    stack = cache.accumulated_resid()  # [rows, 1, 4, d_model]
    with unchanged(model), pytest.raises(ValueError, match=r"tokens \(3,\) .*\(1, 4\)"):
        cache.logit_attrs(stack, tokens=torch.tensor([1, 2, 3]))
