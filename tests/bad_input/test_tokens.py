"""Token ids and their shapes: every entry point that takes ids refuses ids outside the
vocabulary, malformed shapes and non-integer tensors with an error that names the argument (and
for ids the offending value, its position and d_vocab), and computes exactly the right thing for
everything it accepts. Each refusal leaves the model as it was (`unchanged`)."""

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
from tests.helpers import tiny_tokenizer

VOCAB = 37  # tiny_model's d_vocab
EXAMPLES = settings(max_examples=30, deadline=None)


@functools.cache
def model() -> anatomist.HookedTransformer:
    return tiny_model()


@functools.cache
def model_with_tokenizer() -> anatomist.HookedTransformer:
    m = tiny_model(d_vocab=50)
    m.set_tokenizer(tiny_tokenizer())
    return m


@st.composite
def tokens(draw: Any, vocab: int = VOCAB, max_batch: int = 3, max_pos: int = 6) -> torch.Tensor:
    batch = draw(st.integers(1, max_batch))
    pos = draw(st.integers(1, max_pos))
    ids = draw(st.lists(st.integers(0, vocab - 1), min_size=batch * pos, max_size=batch * pos))
    return torch.tensor(ids).reshape(batch, pos)


@st.composite
def tokens_with_one_bad_id(draw: Any, vocab: int = VOCAB) -> tuple[torch.Tensor, int, int, int]:
    """Valid ids but one, which is negative or >= vocab: (tokens, bad id, its row, its pos)."""
    ids = draw(tokens(vocab))
    row = draw(st.integers(0, ids.shape[0] - 1))
    pos = draw(st.integers(0, ids.shape[1] - 1))
    bad = draw(st.one_of(st.integers(-(2**31), -1), st.integers(vocab, 2**31 - 1)))
    ids[row, pos] = bad
    return ids, bad, row, pos


# --- ids out of range -----------------------------------------------------------------------------


@EXAMPLES
@given(tokens_with_one_bad_id())
def test_ids_outside_the_vocabulary_are_refused_with_value_and_position(
    case: tuple[torch.Tensor, int, int, int],
) -> None:
    ids, bad, row, pos = case
    m = model()
    with unchanged(m), pytest.raises(anatomist.TokenIdError) as error:
        m(ids)
    message = str(error.value)
    assert f"token id {bad} at (batch {row}, pos {pos})" in message
    assert f"d_vocab={VOCAB}" in message and message.startswith("input")
    # Code that caught the bare IndexError of the embedding lookup still catches it.
    assert isinstance(error.value, IndexError) and isinstance(error.value, ValueError)


@EXAMPLES
@given(tokens_with_one_bad_id())
def test_bad_ids_are_refused_on_every_path_that_reads_ids(
    case: tuple[torch.Tensor, int, int, int],
) -> None:
    ids, bad, row, pos = case
    m = model()
    where = re.escape(f"input holds token id {bad} at (batch {row}, pos {pos})")
    with unchanged(m), pytest.raises(anatomist.TokenIdError, match=where):
        m.run_with_cache(ids)
    with unchanged(m), pytest.raises(anatomist.TokenIdError, match=where):
        m(ids, return_type="loss")
    with unchanged(m), pytest.raises(anatomist.TokenIdError, match=f"tokens holds token id {bad}"):
        m.tokens_to_residual_directions(ids)


def test_minus_one_no_longer_reads_the_last_token() -> None:
    m = model()
    with unchanged(m), pytest.raises(anatomist.TokenIdError, match="-1 .* padding"):
        m(torch.tensor([[1, -1, 2]]))
    with unchanged(m), pytest.raises(anatomist.TokenIdError, match=f"id {VOCAB} "):
        m(torch.tensor([[1, VOCAB, 2]]))
    with unchanged(m), pytest.raises(anatomist.TokenIdError, match="d_vocab=37"):
        m.tokens_to_residual_directions(-1)


def test_hook_tokens_replacement_is_checked() -> None:
    m = tiny_model()
    m.set_use_hook_tokens(True)
    ids = torch.tensor([[1, 2, 3]])
    shift = [("hook_tokens", lambda t, hook: t + VOCAB)]
    with unchanged(m), pytest.raises(anatomist.TokenIdError, match="hook_tokens' replacement"):
        m.run_with_hooks(ids, fwd_hooks=shift)
    # A replacement inside the vocabulary is exactly the run on those ids.
    inside = [("hook_tokens", lambda t, hook: (t + 1) % VOCAB)]
    assert torch.equal(m.run_with_hooks(ids, fwd_hooks=inside), m((ids + 1) % VOCAB))


def test_tokenizer_helpers_refuse_ids_outside_the_vocabulary() -> None:
    m = model_with_tokenizer()
    with unchanged(m), pytest.raises(anatomist.TokenIdError, match=r"tokens .* -1 .*d_vocab=50"):
        m.to_string(torch.tensor([4, -1]))
    with unchanged(m), pytest.raises(anatomist.TokenIdError, match=r"input .* 50 at \(batch 1"):
        m.to_str_tokens(torch.tensor([[4, 5], [6, 50]]))
    with unchanged(m), pytest.raises(anatomist.TokenIdError, match="int_token .* -3"):
        m.to_single_str_token(-3)
    assert m.to_single_str_token(4) == m.to_str_tokens(torch.tensor([4]))[0]


# --- shapes and dtypes ----------------------------------------------------------------------------


@EXAMPLES
@given(tokens(), st.sampled_from([torch.int32, torch.int16, torch.int8, torch.uint8]))
def test_every_integer_dtype_reads_the_same_ids(ids: torch.Tensor, dtype: torch.dtype) -> None:
    # uint8 used to index the embedding as a boolean mask, int16 not at all.
    m = model()
    assert torch.equal(m(ids.to(dtype)), m(ids))


@EXAMPLES
@given(tokens(max_batch=1))
def test_one_dimensional_ids_are_one_row(ids: torch.Tensor) -> None:
    m = model()
    assert torch.equal(m(ids[0]), m(ids))


@EXAMPLES
@given(
    st.lists(st.integers(1, 3), min_size=3, max_size=4).map(tuple),
)
def test_ids_with_more_than_two_dims_are_refused(shape: tuple[int, ...]) -> None:
    # They used to be flattened into one long row.
    m = model()
    ids = torch.randint(0, VOCAB, shape)
    with (
        unchanged(m),
        pytest.raises(ValueError, match=r"input .*\[batch, pos\].*" + re.escape(str(shape))),
    ):
        m(ids)


@pytest.mark.parametrize("shape", [(0, 5), (2, 0), (0,), (0, 0)])
def test_empty_ids_are_refused(shape: tuple[int, ...]) -> None:
    m = model()
    with unchanged(m), pytest.raises(ValueError, match=re.escape(f"input is empty (shape {shape}")):
        m(torch.zeros(shape, dtype=torch.long))


def test_scalar_and_bool_ids_are_refused() -> None:
    m = model()
    with unchanged(m), pytest.raises(ValueError, match=r"input .*got shape \(\)"):
        m(torch.tensor(3))
    with unchanged(m), pytest.raises(ValueError, match="input must be integer token ids"):
        m(torch.ones(1, 3, dtype=torch.bool))


# --- encoders ----------------------------------------------------------------------------------


@functools.cache
def encoder() -> anatomist.HookedEncoder:
    cfg = anatomist.TransformerConfig(
        n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=20, n_ctx=16,
        act_fn="gelu", normalization_type="LN", seed=0,
    )  # fmt: skip
    return anatomist.HookedEncoder(cfg)


@functools.cache
def encoder_decoder() -> anatomist.HookedEncoderDecoder:
    cfg = anatomist.TransformerConfig(
        n_layers=1, d_model=16, n_heads=2, d_head=8, d_mlp=32, d_vocab=20, n_ctx=16,
        act_fn="relu", normalization_type="RMS",
        positional_embedding_type="relative_positional_bias", use_attn_scale=False, seed=0,
    )  # fmt: skip
    return anatomist.HookedEncoderDecoder(cfg)


@EXAMPLES
@given(tokens_with_one_bad_id(vocab=20))
def test_encoders_refuse_ids_outside_the_vocabulary(
    case: tuple[torch.Tensor, int, int, int],
) -> None:
    ids, bad, row, pos = case
    where = re.escape(f"{bad} at (batch {row}, pos {pos}), outside [0, d_vocab=20)")
    bert, t5 = encoder(), encoder_decoder()
    good = torch.zeros_like(ids)
    with unchanged(bert, probe=False), pytest.raises(anatomist.TokenIdError, match=where):
        bert(ids)
    with unchanged(t5, probe=False), pytest.raises(anatomist.TokenIdError, match=where):
        t5(ids, good[:, :1])
    with unchanged(t5, probe=False), pytest.raises(anatomist.TokenIdError, match=where):
        t5(good, ids)  # the decoder's ids


def test_encoders_refuse_bad_shapes_types_and_masks() -> None:
    bert, t5 = encoder(), encoder_decoder()
    ids = torch.randint(0, 20, (2, 5))
    with unchanged(bert, probe=False), pytest.raises(ValueError, match=r"input .*\(2, 1, 5\)"):
        bert(ids[:, None])
    with unchanged(t5, probe=False), pytest.raises(ValueError, match=r"input .*\(2, 1, 5\)"):
        t5(ids[:, None], ids[:, :1])
    with unchanged(t5, probe=False), pytest.raises(ValueError, match="decoder_input .*float"):
        t5(ids, torch.zeros(2, 1))
    with unchanged(t5, probe=False), pytest.raises(ValueError, match="decoder_input has 1 rows"):
        t5(ids, ids[:1, :1])
    types = torch.zeros_like(ids)
    types[1, 3] = 2
    with (
        unchanged(bert, probe=False),
        pytest.raises(anatomist.TokenIdError, match=r"token_type_ids .* 2 at \(batch 1, pos 3\)"),
    ):
        bert(ids, token_type_ids=types)
    mask = torch.ones_like(ids)
    mask[0, 4] = 2
    for m, args in ((bert, (ids,)), (t5, (ids, ids[:, :1]))):
        with unchanged(m, probe=False), pytest.raises(ValueError, match="attention_mask .* 2"):
            m(*args, attention_mask=mask)
        with unchanged(m, probe=False), pytest.raises(ValueError, match=r"\(2, 5\).*\(2, 4\)"):
            m(*args, attention_mask=mask[:, :4])
    bool_mask = torch.ones_like(ids, dtype=torch.bool)
    bool_mask[0, 4] = False
    assert torch.equal(
        bert(ids, attention_mask=bool_mask), bert(ids, attention_mask=bool_mask.long())
    )
