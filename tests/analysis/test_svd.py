"""SVDInterpreter: the classic singular vectors, projected onto the vocabulary."""

from __future__ import annotations

from typing import Any

import pytest
import torch

import anatomist
from anatomist.analysis import SVDInterpreter
from anatomist.analysis.svd import SVDArgumentError, SVDIndexError
from tests.helpers import gpt2_like, llama_like, randomize_small_params


def _same_up_to_sign(got: torch.Tensor, expected: torch.Tensor) -> float:
    """Largest difference per column, each column compared with the expected one or its negative
    (a singular vector's sign is arbitrary)."""
    got, expected = got.detach(), expected.detach()
    plus = (got - expected).abs().amax(0)
    minus = (got + expected).abs().amax(0)
    return float(torch.minimum(plus, minus).max())


def _rows_to_vocab(rows: torch.Tensor, model: anatomist.HookedTransformer) -> torch.Tensor:
    return (rows @ model.W_U.double()).T.float()  # [d_vocab, k]


@pytest.fixture(scope="module")
def model() -> anatomist.HookedTransformer:
    model = gpt2_like()
    model.process_weights_()
    return model


def test_ov_is_the_right_singular_vectors_of_the_head(model: anatomist.HookedTransformer) -> None:
    got = SVDInterpreter(model).get_singular_vectors("OV", 1, num_vectors=8, head_index=2)
    assert got.shape == (model.cfg.d_vocab, 1, 8) and got.dtype == torch.float32
    assert not got.requires_grad
    attn = model.blocks[1].attn
    OV = attn.W_V[2].double() @ attn.W_O[2].double()  # dense d_model x d_model
    U, _, Vh = torch.linalg.svd(OV)
    k = 8  # the product's rank, d_head
    assert _same_up_to_sign(got[:, 0, :k], _rows_to_vocab(Vh[:k], model)) <= 1e-4
    # The input side (what the head reads) is a different thing: not what is returned.
    assert _same_up_to_sign(got[:, 0, :k], _rows_to_vocab(U.T[:k], model)) > 1e-2


def test_w_in_and_w_out_are_the_classic_vectors(model: anatomist.HookedTransformer) -> None:
    interpreter = SVDInterpreter(model)
    mlp = model.blocks[0].mlp
    # The classic: rows of Vh from svd(W_in.T) and from svd(W_out), both in d_model space.
    _, _, Vh_in = torch.linalg.svd(mlp.W_in.T.double())
    _, _, Vh_out = torch.linalg.svd(mlp.W_out.double())
    w_in = interpreter.get_singular_vectors("w_in", 0, num_vectors=5)
    w_out = interpreter.get_singular_vectors("w_out", -2, num_vectors=5)  # -2 is layer 0
    assert w_in.shape == w_out.shape == (model.cfg.d_vocab, 1, 5)
    assert _same_up_to_sign(w_in[:, 0], _rows_to_vocab(Vh_in[:5], model)) <= 1e-4
    assert _same_up_to_sign(w_out[:, 0], _rows_to_vocab(Vh_out[:5], model)) <= 1e-4
    assert _same_up_to_sign(w_in[:, 0], w_out[:, 0]) > 1e-2


def test_w_in_includes_an_unfolded_norm_weight() -> None:
    model = gpt2_like()  # ln2.w random, not folded
    got = SVDInterpreter(model).get_singular_vectors("w_in", 1, num_vectors=3)
    W = model.blocks[1].mlp.W_in.double() * model.blocks[1].ln2.w.double()[:, None]
    _, _, Vh = torch.linalg.svd(W.T)
    assert _same_up_to_sign(got[:, 0], _rows_to_vocab(Vh[:3], model)) <= 1e-4


def test_grouped_query_heads_use_their_groups_values() -> None:
    model = llama_like()  # 4 query heads, 2 key/value heads
    attn = model.blocks[0].attn
    _, _, W_V, _ = attn.kv_weights
    got = SVDInterpreter(model).get_singular_vectors("OV", 0, num_vectors=4, head_index=3)
    _, _, Vh = torch.linalg.svd(W_V[1].double() @ attn.W_O[3].double())  # head 3 is in group 1
    assert _same_up_to_sign(got[:, 0], _rows_to_vocab(Vh[:4], model)) <= 1e-4


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "message"),
    [
        (("OV", 0), {}, SVDArgumentError, "needs a head_index"),
        (("OV", 0), {"head_index": 0, "num_vectors": 9}, SVDArgumentError, "only 8 singular"),
        (("QK", 0), {}, SVDArgumentError, "vector_type must be one of"),
        (("w_out", 2), {}, SVDIndexError, "layer_index must be between 0 and 1 .* but got 2"),
        (("OV", 0), {"head_index": 4}, SVDIndexError, "head_index must be between 0 and 3"),
    ],
)
def test_bad_requests_say_what_is_wrong(
    model: anatomist.HookedTransformer,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    """Errors name the argument; they are also AssertionErrors, as the classic raised."""
    with pytest.raises(error, match=message) as caught:
        SVDInterpreter(model).get_singular_vectors(*args, **kwargs)
    assert isinstance(caught.value, AssertionError)
    assert isinstance(caught.value, IndexError if error is SVDIndexError else ValueError)


def test_head_index_is_ignored_for_mlp_vectors(model: anatomist.HookedTransformer) -> None:
    """Classic code passes head_index with "w_in"/"w_out"; it does not change the answer."""
    svd = SVDInterpreter(model)
    for vector_type in ("w_in", "w_out"):
        with_head = svd.get_singular_vectors(vector_type, 1, num_vectors=3, head_index=0)
        assert torch.equal(with_head, svd.get_singular_vectors(vector_type, 1, num_vectors=3))


def test_mixture_of_experts_has_no_single_w_in() -> None:
    cfg = anatomist.TransformerConfig(
        n_layers=1, d_model=16, n_ctx=8, d_head=4, d_vocab=20, num_experts=2, experts_per_token=1
    )
    model = anatomist.HookedTransformer(cfg)
    randomize_small_params(model)
    with pytest.raises(ValueError, match="mixture of experts"):
        SVDInterpreter(model).get_singular_vectors("w_out", 0)


def test_classic_attributes(model: anatomist.HookedTransformer) -> None:
    from anatomist.analysis.svd import OUTPUT_EMBEDDING

    svd = SVDInterpreter(model)
    assert svd.params[OUTPUT_EMBEDDING] is model.unembed.W_U
    assert svd.params.keys() == dict(model.named_parameters()).keys()
