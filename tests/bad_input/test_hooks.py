"""What a hook may return in place of an activation or a gradient: a tensor of its shape, dtype
and device (used exactly as returned), or None. Anything else is refused with an error that names
the hook, what was expected and what came back, and says how to fix it; a failing run leaves no
hook behind (`unchanged`)."""

from __future__ import annotations

import functools
import re
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import anatomist
from tests.bad_input.state import tiny_model, unchanged

EXAMPLES = settings(max_examples=30, deadline=None)
IDS = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])

DTYPES = [
    torch.float64,
    torch.float16,
    torch.bfloat16,
    torch.int64,
    torch.int32,
    torch.bool,
]


@functools.cache
def model() -> anatomist.HookedTransformer:
    return tiny_model()


hook_names = st.sampled_from(
    [
        "hook_embed",
        "blocks.0.hook_resid_pre",
        "blocks.0.attn.hook_pattern",
        "blocks.0.attn.hook_attn_scores",
        "blocks.1.mlp.hook_post",
        "blocks.1.attn.hook_z",
        "ln_final.hook_scale",
        "unembed.hook_out",
    ]
)


@EXAMPLES
@given(hook_names, st.sampled_from(DTYPES))
def test_a_replacement_of_another_dtype_is_refused(name: str, dtype: torch.dtype) -> None:
    m = model()

    def cast(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        return activation.to(dtype)

    expected = re.escape(
        f"Hook {cast.__qualname__} on {name!r} returned a {dtype} tensor but the activation is "
        f"torch.float32"
    )
    with unchanged(m), pytest.raises(anatomist.HookDtypeError, match=expected) as error:
        m.run_with_hooks(IDS, fwd_hooks=[(name, cast)])
    assert "replacement.to(activation.dtype)" in str(error.value)
    assert isinstance(error.value, TypeError)


@EXAMPLES
@given(hook_names, st.floats(-4, 4, allow_nan=False, width=32))
def test_a_replacement_of_the_same_dtype_is_used_exactly(name: str, scale: float) -> None:
    m = model()
    seen: dict[str, torch.Tensor] = {}

    def scaled(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        seen["replacement"] = activation * scale
        return seen["replacement"]

    def read(activation: torch.Tensor, hook: Any) -> None:
        seen["after"] = activation

    out = m.run_with_hooks(IDS, fwd_hooks=[(name, scaled), (name, read)])
    assert seen["after"] is seen["replacement"]  # what the model goes on with, not a cast copy
    if name == "unembed.hook_out":
        assert torch.equal(out, seen["replacement"])


def test_a_replacement_on_another_device_is_refused() -> None:
    m = model()

    def elsewhere(activation: torch.Tensor, hook: Any) -> torch.Tensor:
        return torch.empty_like(activation, device="meta")

    name = "blocks.0.hook_resid_post"
    expected = (
        r"on 'blocks.0.hook_resid_post' returned a tensor on meta but the activation is on cpu"
    )
    with unchanged(m), pytest.raises(anatomist.HookDeviceError, match=expected) as error:
        m.run_with_hooks(IDS, fwd_hooks=[(name, elsewhere)])
    assert "replacement.to(activation.device)" in str(error.value)


@EXAMPLES
@given(
    st.sampled_from(["blocks.0.hook_resid_pre", "blocks.1.mlp.hook_post", "hook_embed"]),
    st.sampled_from(DTYPES),
)
def test_a_gradient_replacement_of_another_dtype_is_refused(name: str, dtype: torch.dtype) -> None:
    m = model()

    def cast(grad: torch.Tensor, hook: Any) -> torch.Tensor:
        return grad.to(dtype)

    with unchanged(m):
        loss = m.run_with_hooks(IDS, return_type="loss", bwd_hooks=[(name, cast)])
        expected = re.escape(f"on {name!r} returned a {dtype} tensor but the gradient is")
        with pytest.raises(anatomist.HookDtypeError, match=expected) as error:
            loss.backward()
        assert "replacement.to(gradient.dtype)" in str(error.value)
    m.zero_grad(set_to_none=True)


def test_a_gradient_replacement_of_the_same_dtype_is_used() -> None:
    m = model()
    name = "blocks.1.hook_resid_pre"
    captured: dict[str, torch.Tensor] = {}

    def double(grad: torch.Tensor, hook: Any) -> torch.Tensor:
        return grad * 2

    def record(grad: torch.Tensor, hook: Any) -> None:
        captured["grad"] = grad

    plain = m.run_with_hooks(IDS, return_type="loss", bwd_hooks=[("hook_embed", record)])
    plain.backward()
    reference = captured["grad"]
    hooked = m.run_with_hooks(
        IDS, return_type="loss", bwd_hooks=[(name, double), ("hook_embed", record)]
    )
    hooked.backward()
    torch.testing.assert_close(captured["grad"], reference * 2)
    m.zero_grad(set_to_none=True)


def test_returning_something_else_is_refused() -> None:
    m = model()
    name = "hook_embed"
    with unchanged(m), pytest.raises(TypeError, match="returned float; a hook must return"):
        m.run_with_hooks(IDS, fwd_hooks=[(name, lambda a, hook: 1.0)])
    with unchanged(m), pytest.raises(anatomist.HookShapeError, match=r"returned shape \(2, 3"):
        m.run_with_hooks(IDS, fwd_hooks=[(name, lambda a, hook: a[:, :3])])


@pytest.mark.parametrize(
    ("kwargs", "named"),
    [
        ({"fwd_hooks": [("blocks.0.hook_resid_pre",)]}, "fwd_hooks entries must be"),
        ({"fwd_hooks": [("blocks.0.hook_resid_pre", 3)]}, "fwd_hooks entry for"),
        (
            {"bwd_hooks": ("blocks.0.hook_resid_pre", lambda a, hook: None)},
            "bwd_hooks must be a list",
        ),
        (
            {"fwd_hooks": [("blocks.0.hook_resid_pre", lambda a, hook: None), ("nope", print)]},
            "nope",
        ),
    ],
)
def test_malformed_hook_lists_are_refused_before_any_hook_is_attached(kwargs, named) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model()
    with unchanged(model), pytest.raises((TypeError, KeyError), match=named):
        model.run_with_hooks(torch.tensor([[1, 2, 3]]), **kwargs)


@pytest.mark.parametrize("names_filter", [3, 2.5, object()])
def test_a_names_filter_of_another_type_is_named(names_filter) -> None:  # type: ignore[no-untyped-def]
    model = tiny_model()
    with unchanged(model), pytest.raises(TypeError, match="names_filter must be"):
        model.run_with_cache(torch.tensor([[1, 2, 3]]), names_filter=names_filter)


def test_context_level_can_be_set_as_classic_subclasses_do() -> None:
    model = tiny_model()
    model.context_level = 0
    with model.hooks([("blocks.0.hook_resid_pre", lambda a, hook: None)]):
        assert model.context_level == 1
    assert model.context_level == 0
