"""Bad generation settings are refused up front, naming the argument, and change nothing."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import anatomist
from anatomist.utils import sample_logits
from tests.helpers import BUILDERS, tiny_tokenizer

from .state import tiny_model, unchanged


@pytest.fixture(scope="module")
def model() -> anatomist.HookedTransformer:
    return tiny_model()


PROMPT = torch.tensor([[1, 2, 3]])

BAD: list[tuple[str, Any, str]] = [
    ("max_new_tokens", -1, "max_new_tokens"),
    ("max_new_tokens", 2.5, "max_new_tokens"),
    ("max_new_tokens", True, "max_new_tokens"),
    ("temperature", math.nan, "temperature"),
    ("temperature", math.inf, "temperature"),
    ("temperature", -0.5, "temperature"),
    ("top_k", 0, "top_k"),
    ("top_k", 2.0, "top_k"),
    ("top_p", 0.0, "top_p"),
    ("top_p", 1.5, "top_p"),
    ("top_p", math.nan, "top_p"),
    ("freq_penalty", math.nan, "freq_penalty"),
    ("repetition_penalty", 0.0, "repetition_penalty"),
    ("repetition_penalty", math.nan, "repetition_penalty"),
    ("eos_token_id", 37, "eos_token_id"),
    ("eos_token_id", -1, "eos_token_id"),
    ("eos_token_id", [], "eos_token_id"),
    ("eos_token_id", [3, 999], "eos_token_id"),
]


@pytest.mark.parametrize(("argument", "value", "named"), BAD)
@pytest.mark.parametrize("method", ["generate", "generate_stream"])
def test_bad_setting_is_refused(
    model: anatomist.HookedTransformer, method: str, argument: str, value: Any, named: str
) -> None:
    kwargs: dict[str, Any] = dict(max_new_tokens=3, verbose=False, stop_at_eos=False)
    if method == "generate_stream":
        kwargs.pop("verbose")
    if argument == "eos_token_id":
        kwargs["stop_at_eos"] = True
    kwargs[argument] = value
    with unchanged(model), pytest.raises((ValueError, TypeError), match=named):
        result = getattr(model, method)(PROMPT, **kwargs)
        if method == "generate_stream":
            list(result)


def test_zero_new_tokens_returns_the_prompt(model: anatomist.HookedTransformer) -> None:
    out = model.generate(PROMPT, max_new_tokens=0, verbose=False, stop_at_eos=False)
    assert torch.equal(out, PROMPT)


def test_sample_logits_refuses_a_nan_temperature() -> None:
    with pytest.raises(ValueError, match="temperature"):
        sample_logits(torch.randn(2, 5), temperature=math.nan)


@settings(max_examples=40, deadline=None)
@given(
    temperature=st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.just(0.0)),
    top_k=st.one_of(st.none(), st.integers(-3, 8)),
    top_p=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
)
def test_sampling_either_samples_a_valid_id_or_names_the_argument(
    temperature: float, top_k: int | None, top_p: float | None
) -> None:
    logits = torch.randn(3, 7)
    valid = (
        math.isfinite(temperature)
        and temperature >= 0
        and (top_k is None or top_k >= 1)
        and (top_p is None or (math.isfinite(top_p) and 0 < top_p <= 1))
    )
    if valid:
        ids = sample_logits(logits, top_k=top_k, top_p=top_p, temperature=temperature)
        assert ids.shape == (3,) and bool(((ids >= 0) & (ids < 7)).all())
        if temperature == 0:
            assert torch.equal(ids, logits.argmax(-1))
    else:
        with pytest.raises(ValueError, match="temperature|top_k|top_p"):
            sample_logits(logits, top_k=top_k, top_p=top_p, temperature=temperature)


def test_left_padded_ids_without_a_mask_generate_as_with_it() -> None:
    """generate reads ids as forward does: on a left-padding model the leading pad ids are
    padding, with and without the KV cache (without the cache they used to be masked, with it
    they were read as text), and the result is the row's own continuation."""
    model = BUILDERS["llama"]()
    tok = tiny_tokenizer()
    tok.pad_token = "<pad>"
    model.set_tokenizer(tok, default_padding_side="left")
    pad = tok.pad_token_id
    ids = torch.tensor([[pad, pad, 7, 8, 9]])
    mask = torch.tensor([[0, 0, 1, 1, 1]])
    kwargs: dict[str, Any] = dict(max_new_tokens=4, do_sample=False, stop_at_eos=False)
    runs = {
        (cache, given): model.generate(
            ids,
            use_past_kv_cache=cache,
            attention_mask=mask if given else None,
            verbose=False,
            **kwargs,
        )
        for cache in (True, False)
        for given in (True, False)
    }
    alone = model.generate(ids[:, 2:], verbose=False, **kwargs)
    for out in runs.values():
        assert torch.equal(out[:, 2:], alone)
