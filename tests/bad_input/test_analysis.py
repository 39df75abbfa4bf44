"""Analysis helpers name the bad argument: FactoredMatrix factors, the language-model loss."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from anatomist import FactoredMatrix, patching
from anatomist.analysis.attribution import attribution_patch
from anatomist.analysis.head_detector import detect_head
from anatomist.analysis.path_patching import path_patch
from anatomist.analysis.svd import SVDInterpreter
from anatomist.utils import lm_accuracy, lm_cross_entropy_loss

from .state import tiny_model, unchanged


def test_factors_whose_leading_dims_do_not_broadcast_are_named() -> None:
    with pytest.raises(ValueError, match=r"leading .*\(3,\).*\(4,\)"):
        FactoredMatrix(torch.randn(3, 5, 2), torch.randn(4, 2, 5))


@settings(max_examples=40, deadline=None)
@given(
    lead_a=st.lists(st.integers(1, 3), max_size=2),
    lead_b=st.lists(st.integers(1, 3), max_size=2),
    inner_b=st.integers(1, 3),
)
def test_factored_matrix_is_the_product_or_a_value_error(
    lead_a: list[int], lead_b: list[int], inner_b: int
) -> None:
    A, B = torch.randn(*lead_a, 4, 2), torch.randn(*lead_b, inner_b, 3)
    try:
        expected = A @ B
    except RuntimeError:
        with pytest.raises(ValueError, match="FactoredMatrix"):
            FactoredMatrix(A, B)
        return
    # float32 rounding only (the product may be summed in another order than torch's matmul)
    torch.testing.assert_close(FactoredMatrix(A, B).AB, expected, rtol=1e-5, atol=1e-6)


LOGITS = torch.randn(2, 5, 11)
TOKENS = torch.randint(0, 11, (2, 5))


@pytest.mark.parametrize(
    ("logits", "tokens", "mask", "named"),
    [
        (LOGITS, TOKENS[:, :3], None, "tokens"),  # was gathered into a loss over 3 positions
        (LOGITS, TOKENS[:1], None, "tokens"),
        (LOGITS[0], TOKENS, None, "logits"),
        (LOGITS, TOKENS, torch.ones(2, 3), "attention_mask"),
        (LOGITS, TOKENS.float(), None, "tokens"),
        (LOGITS, TOKENS.masked_fill(TOKENS[0, 2] == TOKENS, 11), None, r"id 11 .*d_vocab=11"),
        (LOGITS, TOKENS.masked_fill(TOKENS[1, 3] == TOKENS, -1), None, "id -1"),
    ],
)
def test_loss_refuses_tokens_that_do_not_fit_the_logits(logits, tokens, mask, named) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises((ValueError, TypeError), match=named):
        lm_cross_entropy_loss(logits, tokens, mask)
    if mask is None:
        with pytest.raises((ValueError, TypeError), match=named):
            lm_accuracy(logits, tokens)


def test_loss_of_fitting_tokens_is_the_cross_entropy() -> None:
    expected = torch.nn.functional.cross_entropy(
        LOGITS[:, :-1].reshape(-1, 11), TOKENS[:, 1:].reshape(-1)
    )
    assert torch.allclose(lm_cross_entropy_loss(LOGITS, TOKENS), expected, atol=1e-6)


# --- patching, head detection, SVD: mismatched runs and out-of-range indices ------------------
@pytest.fixture(scope="module")
def clean():  # type: ignore[no-untyped-def]
    model = tiny_model()
    tokens = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 8]])
    _, cache = model.run_with_cache(tokens)
    return model, tokens, cache


def _metric(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1, 0].mean()


@pytest.mark.parametrize(
    "corrupted",
    [torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 4, 5]]), torch.tensor([[1, 2, 3, 4]])],
    ids=["longer", "one-row"],
)
@pytest.mark.parametrize("name", ["resid_pre", "pattern", "z"])
def test_patching_refuses_a_clean_cache_of_another_run(clean, corrupted, name) -> None:  # type: ignore[no-untyped-def]
    model, _, cache = clean
    with unchanged(model), pytest.raises(ValueError, match=r"clean_cache\[.*corrupted_tokens"):
        patching.generic_activation_patch(
            model, corrupted, cache, _metric, lambda a, i, c: c, name,
            index_axis_names=("layer",), progress=False,
        )  # fmt: skip


def test_path_patching_refuses_a_clean_cache_of_another_run(clean) -> None:  # type: ignore[no-untyped-def]
    model, tokens, cache = clean
    with unchanged(model), pytest.raises(ValueError, match="clean_cache"):
        path_patch(model, tokens[:1], cache, _metric, senders=(0, 1))
    with unchanged(model), pytest.raises(ValueError, match=r"senders .*\(0, 5\)"):
        path_patch(model, tokens, cache, _metric, senders=(0, 5))


def test_attribution_patching_refuses_a_clean_batch_that_would_broadcast(clean) -> None:  # type: ignore[no-untyped-def]
    model, tokens, _ = clean
    _, one_row = model.run_with_cache(tokens[:1])
    with unchanged(model), pytest.raises(ValueError, match="same batch size"):
        attribution_patch(model, tokens, one_row, _metric, components=["resid_pre"])


def test_head_detection_and_svd_refuse_out_of_range_indices(clean) -> None:  # type: ignore[no-untyped-def]
    model, tokens, _ = clean
    with unchanged(model), pytest.raises(ValueError, match=r"head 7 of layer 0.*n_heads=2"):
        detect_head(model, tokens[0], "previous_token_head", heads=[(0, 7)])
    with pytest.raises(ValueError, match="num_vectors"):
        SVDInterpreter(model).get_singular_vectors("OV", 0, num_vectors=0, head_index=0)
