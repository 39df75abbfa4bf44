"""``load_state_dict`` loads everything or nothing.

torch's own copies tensor by tensor and raises at the end, so a state dict with one bad tensor
used to leave the model half old, half new. Ours checks the whole state dict first: a failing
call names each bad tensor (expected and given shape) and leaves the model exactly as it was.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import anatomist
from anatomist.model.state_dict import StateDictError

from .state import tiny_model, unchanged


def _encoder() -> anatomist.HookedEncoder:
    cfg = anatomist.TransformerConfig(
        n_layers=2, d_model=16, n_ctx=20, d_head=4, d_vocab=30, act_fn="gelu", seed=0
    )
    return anatomist.HookedEncoder(cfg)


def _encoder_decoder() -> anatomist.HookedEncoderDecoder:
    cfg = anatomist.TransformerConfig(
        n_layers=2, d_model=16, n_ctx=32, d_head=4, d_vocab=20, act_fn="relu",
        normalization_type="RMS", positional_embedding_type="relative_positional_bias",
        use_attn_scale=False, seed=0,
    )  # fmt: skip
    return anatomist.HookedEncoderDecoder(cfg)


MODELS: dict[str, Callable[[], Any]] = {
    "HookedTransformer": tiny_model,
    "HookedEncoder": _encoder,
    "HookedEncoderDecoder": _encoder_decoder,
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def model(request: pytest.FixtureRequest) -> Any:
    return MODELS[request.param]()


def _probe(model: Any) -> bool:
    # unchanged() compares the logits of a fixed input; the encoder-decoder needs a decoder input
    return not isinstance(model, anatomist.HookedEncoderDecoder)


def _new_values(model: Any) -> dict[str, torch.Tensor]:
    """A complete, valid state dict with other values than the model's."""
    return {k: v.detach().clone() + 0.5 for k, v in model.state_dict().items()}


def _last_key(model: Any) -> str:
    """The last tensor torch would copy: every other one would be loaded before it fails."""
    return list(model.state_dict())[-1]


def test_one_wrong_shape_loads_nothing(model: Any) -> None:
    state = _new_values(model)
    key = _last_key(model)
    want = tuple(state[key].shape)
    state[key] = torch.zeros(3, 5)
    with unchanged(model, probe=_probe(model)), pytest.raises(StateDictError) as info:
        model.load_state_dict(state)
    message = str(info.value)
    assert key in message and str(want) in message and "(3, 5)" in message
    assert isinstance(info.value, RuntimeError)  # what torch raises: callers keep working


def test_wrong_shape_loads_nothing_when_not_strict(model: Any) -> None:
    state = _new_values(model)
    state[_last_key(model)] = torch.zeros(1)
    with unchanged(model, probe=_probe(model)), pytest.raises(StateDictError):
        model.load_state_dict(state, strict=False)


@pytest.mark.parametrize(
    "damage",
    ["missing key", "unexpected key", "not a tensor", "complex values", "meta tensor"],
)
def test_any_bad_entry_loads_nothing(model: Any, damage: str) -> None:
    state: dict[str, Any] = _new_values(model)
    key = _last_key(model)
    if damage == "missing key":
        del state[key]
    elif damage == "unexpected key":
        state["blocks.0.attn.W_X"] = torch.zeros(2)
    elif damage == "not a tensor":
        state[key] = state[key].tolist()
    elif damage == "complex values":
        state[key] = state[key].to(torch.complex64)
    else:
        state[key] = torch.empty(state[key].shape, device="meta")
    with unchanged(model, probe=_probe(model)), pytest.raises(StateDictError) as info:
        model.load_state_dict(state)
    shown = "W_X" if damage == "unexpected key" else key
    assert shown in str(info.value)


def test_a_valid_state_dict_loads_in_full(model: Any) -> None:
    fresh = MODELS[type(model).__name__]()
    state = _new_values(fresh)
    result = fresh.load_state_dict(state)
    assert not result.missing_keys and not result.unexpected_keys
    assert all(torch.equal(v, state[k]) for k, v in fresh.state_dict().items())
    # Lenient loading still reports what it skipped, as torch does.
    del state[_last_key(fresh)]
    assert fresh.load_state_dict(state, strict=False).missing_keys == [_last_key(fresh)]


def test_not_a_mapping() -> None:
    model = tiny_model()
    with unchanged(model), pytest.raises(TypeError, match="mapping"):
        model.load_state_dict([("embed.W_E", model.W_E)])  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def gpt2_like() -> anatomist.HookedTransformer:
    return tiny_model()


@settings(max_examples=30, deadline=None)
@given(data=st.data())
def test_any_one_bad_tensor_leaves_the_model_as_it_was(
    data: st.DataObject, gpt2_like: anatomist.HookedTransformer
) -> None:
    """Whichever tensor is bad, and however, nothing of the state dict is loaded."""
    model = gpt2_like
    state = _new_values(model)
    key = data.draw(st.sampled_from(sorted(state)), label="key")
    shape = list(state[key].shape)
    bad_shape = data.draw(
        st.lists(st.integers(1, 40), min_size=1, max_size=3).filter(lambda s: s != shape),
        label="shape",
    )
    state[key] = torch.randn(bad_shape)
    strict = data.draw(st.booleans(), label="strict")
    with unchanged(model), pytest.raises(StateDictError, match=key.replace(".", r"\.")):
        model.load_state_dict(state, strict=strict)
