"""FactoredMatrix against the dense float64 product, over random shapes, batch dims and ranks."""

from __future__ import annotations

import os
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import broadcastable_shapes, mutually_broadcastable_shapes
from torch import Tensor

from anatomist import FactoredMatrix
from anatomist.utils import composition_scores

# Derandomized: the same examples on every run, so CI is reproducible. To explore afresh, run
# with ANATOMIST_HYPOTHESIS_EXPLORE=1 (random examples, ten times as many).
EXPLORE = bool(os.environ.get("ANATOMIST_HYPOTHESIS_EXPLORE"))
SETTINGS = settings(
    max_examples=500 if EXPLORE else 50, deadline=None, database=None, derandomize=not EXPLORE
)
RTOL = 1e-6
dims = st.integers(1, 7)
leading_pairs = mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3)
seeds = st.integers(0, 2**31 - 1)


def randn(*shape: int, seed: int, offset: int = 0) -> Tensor:
    generator = torch.Generator().manual_seed(seed + offset)
    return torch.randn(*shape, generator=generator, dtype=torch.float64)


def assert_close(actual: Tensor, expected: Tensor, rtol: float = RTOL) -> None:
    """Relative error in the Frobenius norm, over the whole tensor."""
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    scale = max(float(torch.linalg.vector_norm(expected)), 1e-300)
    error = float(torch.linalg.vector_norm(actual.to(expected.dtype) - expected))
    assert error <= rtol * scale, f"relative error {error / scale:.3g} > {rtol}"


def factors(data: Any, square: bool = False) -> tuple[Tensor, Tensor]:
    """Random float64 A [..., m, k], B [..., k, n] with mutually broadcastable leading dims."""
    (lead_a, lead_b), _ = data.draw(leading_pairs)
    m, k = data.draw(dims), data.draw(dims)
    n = m if square else data.draw(dims)
    seed = data.draw(seeds)
    return randn(*lead_a, m, k, seed=seed), randn(*lead_b, k, n, seed=seed, offset=1)


def low_rank_factors(data: Any, square: bool = False) -> tuple[Tensor, Tensor, int]:
    """Factors whose product has rank exactly r < mdim (generically): A = X [m, r] @ Y [r, k]."""
    (lead_a, lead_b), _ = data.draw(leading_pairs)
    m, k = data.draw(st.integers(2, 7)), data.draw(st.integers(2, 7))
    n = m if square else data.draw(st.integers(2, 7))
    r = data.draw(st.integers(1, min(m, k, n) - 1)) if min(m, k, n) > 1 else 1
    seed = data.draw(seeds)
    A = randn(*lead_a, m, r, seed=seed) @ randn(r, k, seed=seed, offset=1)
    return A, randn(*lead_b, k, n, seed=seed, offset=2), r


def orthonormal_columns(Q: Tensor) -> None:
    eye = torch.eye(Q.shape[-1], dtype=Q.dtype).expand(*Q.shape[:-2], -1, -1)
    assert_close(Q.transpose(-2, -1) @ Q, eye, rtol=1e-9)


@SETTINGS
@given(st.data())
def test_product_shapes_and_views(data: Any) -> None:
    A, B = factors(data)
    fm = FactoredMatrix(A, B)
    dense = A @ B
    assert fm.shape == dense.shape and fm.ndim == dense.ndim
    assert (fm.ldim, fm.mdim, fm.rdim) == (A.shape[-2], A.shape[-1], B.shape[-1])
    assert_close(fm.AB, dense)
    assert_close(fm.T.AB, dense.transpose(-2, -1))
    assert_close(fm.pair[0] @ fm.pair[1], dense)
    assert_close(fm.get_corner(2), dense[tuple(slice(2) for _ in range(dense.ndim))])
    assert_close((fm * 3.0).AB, 3 * dense)
    assert_close((0.5 * fm).AB, 0.5 * dense)
    assert_close((torch.tensor(-2.0, dtype=torch.float64) * fm).AB, -2 * dense)
    assert_close(fm.norm(), torch.linalg.matrix_norm(dense))
    assert fm.norm().dtype == torch.float64


@SETTINGS
@given(st.data())
def test_svd_reconstructs_and_is_orthonormal(data: Any) -> None:
    A, B = factors(data)
    fm = FactoredMatrix(A, B)
    dense = A @ B
    U, S, V = fm.svd()
    r = min(fm.ldim, fm.mdim, fm.rdim)  # random Gaussian factors: full rank
    assert U.shape == (*fm.shape[:-2], fm.ldim, r)
    assert S.shape == (*fm.shape[:-2], r) and V.shape == (*fm.shape[:-2], fm.rdim, r)
    assert_close(U @ torch.diag_embed(S) @ V.transpose(-2, -1), dense)
    assert_close(S, torch.linalg.svdvals(dense)[..., :r])
    orthonormal_columns(U)
    orthonormal_columns(V)
    assert fm.U is U and fm.S is S and fm.V is V and fm.Vh is V  # cached; Vh is the classic V
    assert_close(fm.collapse_r(), U * S[..., None, :])
    assert_close(fm.U @ fm.collapse_l(), dense)
    assert_close(fm.collapse_r() @ fm.V.transpose(-2, -1), dense)
    assert_close(fm.make_even().AB, dense)


@SETTINGS
@given(st.data())
def test_svd_of_rank_r_product_has_rank_r(data: Any) -> None:
    A, B, r = low_rank_factors(data)
    fm = FactoredMatrix(A, B)
    dense = A @ B
    U, S, V = fm.svd()
    assert S.shape[-1] == r and U.shape[-1] == r and V.shape[-1] == r
    assert bool((S > 0).all())
    assert_close(U @ torch.diag_embed(S) @ V.transpose(-2, -1), dense)
    assert_close(S, torch.linalg.svdvals(dense)[..., :r])
    # rtol=0 keeps every value, as the classic class did
    assert fm.svd(rtol=0.0)[1].shape[-1] == min(fm.ldim, fm.mdim, fm.rdim)


def test_svd_rank_is_the_largest_in_the_batch() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 6, 4, dtype=torch.float64)
    A = torch.stack([x[0, :, :1] @ torch.randn(1, 4, dtype=torch.float64), x[1]])  # rank 1, 4
    fm = FactoredMatrix(A, torch.randn(4, 5, dtype=torch.float64))
    U, S, V = fm.svd()
    assert S.shape == (2, 4)
    assert bool((S[0, 1:] == 0).all()) and bool((S[1] > 0).all())
    assert_close(U @ torch.diag_embed(S) @ V.transpose(-2, -1), fm.AB)


def match_nonzero(found: Tensor, expected: Tensor, scale: float) -> None:
    """The nonzero values of ``found`` and ``expected`` agree as multisets (to RTOL * scale)."""
    floor = 1e-4 * scale  # zero eigenvalues of a defective block come out as ~sqrt(eps)
    left = [complex(z) for z in found if abs(complex(z)) > floor]
    right = [complex(z) for z in expected if abs(complex(z)) > floor]
    assert len(left) == len(right), (left, right)
    for z in left:
        nearest = min(right, key=lambda w: abs(w - z))
        assert abs(nearest - z) <= RTOL * scale, (z, nearest)
        right.remove(nearest)


@SETTINGS
@given(st.data(), st.booleans())
def test_eigenvalues_match_the_dense_product(data: Any, low_rank: bool) -> None:
    A, B = low_rank_factors(data, square=True)[:2] if low_rank else factors(data, square=True)
    fm = FactoredMatrix(A, B)
    dense = A @ B
    eigenvalues = fm.eigenvalues
    assert eigenvalues.dtype == torch.complex128
    assert eigenvalues.shape == (*fm.shape[:-2], fm.mdim)
    assert_close(fm.BA, B @ A)
    expected = torch.linalg.eigvals(dense)
    scales = torch.linalg.matrix_norm(dense).reshape(-1)
    for found, want, scale in zip(
        eigenvalues.reshape(-1, fm.mdim), expected.reshape(-1, fm.ldim), scales, strict=True
    ):
        match_nonzero(found, want, float(scale))


@SETTINGS
@given(st.data())
def test_matmul_with_tensors_and_factored_matrices(data: Any) -> None:
    A, B = factors(data)
    fm = FactoredMatrix(A, B)
    dense = A @ B
    seed = data.draw(seeds)
    lead = tuple(fm.shape[:-2])  # the tensors' leading dims must broadcast with the matrix's
    lead_right = data.draw(broadcastable_shapes(lead, min_dims=0, max_dims=3, max_side=3))
    lead_left = data.draw(broadcastable_shapes(lead, min_dims=0, max_dims=3, max_side=3))
    new = data.draw(dims)
    right = randn(*lead_right, fm.rdim, new, seed=seed)
    left = randn(*lead_left, new, fm.ldim, seed=seed, offset=1)
    vector_r, vector_l = randn(fm.rdim, seed=seed, offset=2), randn(fm.ldim, seed=seed, offset=3)

    product = fm @ right
    assert isinstance(product, FactoredMatrix)
    assert_close(product.AB, dense @ right)
    product = left @ fm
    assert isinstance(product, FactoredMatrix)
    assert_close(product.AB, left @ dense)
    assert_close(fm @ vector_r, (dense @ vector_r[:, None])[..., 0])
    assert_close(vector_l @ fm, (vector_l[None, :] @ dense)[..., 0, :])

    other = FactoredMatrix(
        randn(fm.rdim, 3, seed=seed, offset=4), randn(3, new, seed=seed, offset=5)
    )
    product = fm @ other
    assert isinstance(product, FactoredMatrix)
    assert_close(product.AB, dense @ other.AB)
    product = other.T @ fm.T
    assert isinstance(product, FactoredMatrix)
    assert_close(product.AB, other.AB.transpose(-2, -1) @ dense.transpose(-2, -1))


def index_entry(data: Any, size: int) -> Any:
    return data.draw(
        st.one_of(
            st.integers(-size, size - 1),
            st.builds(
                slice, st.none() | st.integers(-size, size), st.none() | st.integers(-size, size)
            ),
        )
    )


def keep_dim(entry: Any, size: int) -> Any:
    return slice(entry % size, entry % size + 1) if isinstance(entry, int) else entry


@SETTINGS
@given(st.data())
def test_indexing_matches_dense_indexing(data: Any) -> None:
    A, B = factors(data)
    fm = FactoredMatrix(A, B)
    dense = A @ B
    n_lead = fm.ndim - 2
    lead = [index_entry(data, fm.shape[i]) for i in range(data.draw(st.integers(0, n_lead)))]
    matrix: list[Any] = []
    if len(lead) == n_lead:
        sizes = (fm.ldim, fm.rdim)[: data.draw(st.integers(0, 2))]
        matrix = [index_entry(data, size) for size in sizes]
    if data.draw(st.booleans()):
        lead.insert(data.draw(st.integers(0, len(lead))), None)
    expected = dense[tuple(lead)]
    if matrix:
        expected = expected[..., keep_dim(matrix[0], fm.ldim), :]
    if len(matrix) == 2:
        expected = expected[..., :, keep_dim(matrix[1], fm.rdim)]
    index = tuple(lead + matrix)
    assert_close(fm[index].AB, expected)
    if len(index) == 1:
        assert_close(fm[index[0]].AB, expected)


def test_indexing_with_ellipsis_and_negative_ints() -> None:
    A, B = torch.randn(2, 3, 5, 4), torch.randn(4, 6)
    fm, dense = FactoredMatrix(A, B), A @ B
    torch.testing.assert_close(fm[..., -1].AB, dense[..., -1:])
    torch.testing.assert_close(fm[..., -1, :].AB, dense[..., -1:, :])
    torch.testing.assert_close(fm[1, ..., 2:4].AB, dense[1, ..., 2:4])
    torch.testing.assert_close(fm[-1, -1, -1, -1].AB, dense[-1:, -1:, -1:, -1:][0, 0])
    assert fm[0, 1, 2].shape == (1, 6)
    with pytest.raises(IndexError, match="too long"):
        fm[0, 0, 0, 0, 0]
    with pytest.raises(IndexError, match="out of range"):
        fm[0, 0, 5]


@SETTINGS
@given(st.data())
def test_unsqueeze_adds_leading_dims(data: Any) -> None:
    A, B = factors(data)
    fm = FactoredMatrix(A, B)
    dense = A @ B
    k = data.draw(st.integers(0, fm.ndim - 2))
    assert_close(fm.unsqueeze(k).AB, dense.unsqueeze(k))
    assert_close(fm.unsqueeze(k - fm.ndim - 1).AB, dense.unsqueeze(k))


def test_unsqueeze_refuses_matrix_dims() -> None:
    fm = FactoredMatrix(torch.randn(3, 4, 2), torch.randn(2, 4))
    with pytest.raises(IndexError, match="matrix dims"):
        fm.unsqueeze(-1)
    with pytest.raises(IndexError, match="matrix dims"):
        fm.unsqueeze(2)


def test_constructor_errors_and_dtype_promotion() -> None:
    with pytest.raises(ValueError, match="inner dimension"):
        FactoredMatrix(torch.randn(3, 4), torch.randn(5, 3))
    with pytest.raises(ValueError, match="at least 2 dims"):
        FactoredMatrix(torch.randn(3), torch.randn(3, 3))
    with pytest.raises(ValueError, match="square"):
        _ = FactoredMatrix(torch.randn(3, 2), torch.randn(2, 4)).eigenvalues
    with pytest.raises(ValueError, match="one-element"):
        FactoredMatrix(torch.randn(3, 2), torch.randn(2, 4)) * torch.ones(2)
    mixed = FactoredMatrix(torch.randn(3, 2, dtype=torch.bfloat16), torch.randn(2, 4))
    assert mixed.A.dtype == mixed.B.dtype == torch.float32
    with pytest.raises(ValueError, match="do not match"):
        mixed @ torch.randn(3, 3)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_low_precision_factors_use_float64(dtype: torch.dtype) -> None:
    # Small integers are exact in every dtype, so the product's rank is exact too.
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(-3, 4, (2, 16, 2), generator=generator)
    y = torch.randint(-3, 4, (2, 2, 6), generator=generator)
    A = (x @ y).to(dtype)  # [2, 16, 6], rank <= 2
    B = torch.randint(-3, 4, (6, 16), generator=generator).to(dtype)
    fm = FactoredMatrix(A, B)
    dense = A.double() @ B.double()
    assert fm.AB.dtype == dtype
    U, S, V = fm.svd()
    assert U.dtype == S.dtype == V.dtype == torch.float64
    rank = int(torch.linalg.matrix_rank(dense).max())
    assert S.shape == (2, rank)
    assert_close(U @ torch.diag_embed(S) @ V.transpose(-2, -1), dense, rtol=1e-12)
    assert_close(fm.norm(), torch.linalg.matrix_norm(dense), rtol=1e-12)
    for found, want in zip(fm.eigenvalues, torch.linalg.eigvals(dense), strict=True):
        match_nonzero(found, want, float(torch.linalg.matrix_norm(dense).max()))


def composition_by_definition(left: Tensor, right: Tensor) -> Tensor:
    """||L R||_F / (||L||_F ||R||_F), straight from the definition on dense matrices."""
    norm = torch.linalg.matrix_norm
    return norm(left @ right) / (norm(left) * norm(right))


@SETTINGS
@given(st.data())
def test_composition_scores_match_the_definition(data: Any) -> None:
    (lead_l, lead_r), _ = data.draw(leading_pairs)
    d, k_left, k_right, seed = data.draw(dims), data.draw(dims), data.draw(dims), data.draw(seeds)
    left = FactoredMatrix(
        randn(*lead_l, d, k_left, seed=seed), randn(k_left, d, seed=seed, offset=1)
    )
    right = FactoredMatrix(
        randn(*lead_r, d, k_right, seed=seed, offset=2), randn(k_right, d, seed=seed, offset=3)
    )
    L, R = left.AB, right.AB
    # broadcast_dims: every left matrix against every right one -> [*lead_l, *lead_r]
    n_l, n_r = len(lead_l), len(lead_r)
    L_all = L.reshape(*lead_l, *([1] * n_r), d, d)
    R_all = R.reshape(*([1] * n_l), *R.shape)
    scores = composition_scores(left, right)
    assert scores.dtype == torch.float64
    assert_close(scores, composition_by_definition(L_all, R_all))
    # without it, the leading dims broadcast against each other
    assert_close(
        composition_scores(left, right, broadcast_dims=False), composition_by_definition(L, R)
    )


def test_shape_errors_are_also_the_classic_exceptions() -> None:
    """Code written against the classic class catches AssertionError (shapes it asserted) and
    RuntimeError (leading dims torch could not broadcast); both still are ValueErrors."""
    from anatomist.analysis.factored_matrix import (
        FactoredMatrixBroadcastError,
        FactoredMatrixShapeError,
    )

    fm = FactoredMatrix(torch.randn(3, 4), torch.randn(4, 6))
    attempts = [
        lambda: FactoredMatrix(torch.randn(3, 4), torch.randn(5, 6)),  # inner dims
        lambda: fm @ torch.randn(5, 2),  # rows of the right operand
        lambda: torch.randn(2, 5) @ fm,  # columns of the left operand
        lambda: fm * torch.randn(2, 2),  # not a scalar
        lambda: fm.BA,  # not square
        lambda: fm.eigenvalues,
    ]
    for attempt in attempts:
        with pytest.raises(FactoredMatrixShapeError) as caught:
            attempt()
        assert isinstance(caught.value, AssertionError) and isinstance(caught.value, ValueError)
    with pytest.raises(FactoredMatrixBroadcastError, match="mismatch") as caught:
        FactoredMatrix(torch.randn(9, 5, 3), torch.randn(2, 4, 3, 7))
    assert isinstance(caught.value, RuntimeError) and isinstance(caught.value, AssertionError)
    batched = FactoredMatrix(torch.randn(2, 3, 4), torch.randn(2, 4, 6))
    with pytest.raises(RuntimeError):  # the product's leading dims (2) and (4) do not broadcast
        torch.randn(4, 6, 3) @ batched


class _Wrapped:
    """A duck-typed tensor (not a torch.Tensor subclass)."""

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor

    ndim = property(lambda self: self.tensor.ndim)
    shape = property(lambda self: self.tensor.shape)

    def size(self, dim: int) -> int:
        return self.tensor.size(dim)

    def unsqueeze(self, dim: int) -> _Wrapped:
        return _Wrapped(self.tensor.unsqueeze(dim))

    def squeeze(self, dim: int) -> _Wrapped:
        return _Wrapped(self.tensor.squeeze(dim))

    def broadcast_to(self, shape: Any) -> _Wrapped:
        return _Wrapped(self.tensor.broadcast_to(shape))

    def __matmul__(self, other: Any) -> Any:
        if isinstance(other, FactoredMatrix):
            return NotImplemented
        return _Wrapped(self.tensor @ getattr(other, "tensor", other))

    def __rmatmul__(self, other: Tensor) -> _Wrapped:
        return _Wrapped(other @ self.tensor)


def test_products_with_tensor_like_operands() -> None:
    from anatomist.analysis.factored_matrix import TensorLike

    a, b = randn(2, 3, seed=1), randn(3, 4, seed=2)
    fm = FactoredMatrix(a, b)
    assert isinstance(_Wrapped(a), TensorLike)
    right = randn(4, 5, seed=3)
    product = fm @ _Wrapped(right)
    assert isinstance(product, FactoredMatrix)
    assert_close(product.AB.tensor, a @ b @ right)
    left = randn(5, 2, seed=4)
    product = _Wrapped(left) @ fm
    assert isinstance(product, FactoredMatrix)
    assert_close(product.AB.tensor, left @ a @ b)
    vector = randn(4, seed=5)
    assert_close((fm @ _Wrapped(vector)).tensor, a @ b @ vector)


def test_vh_is_v_and_deprecated() -> None:
    fm = FactoredMatrix(randn(4, 3, seed=1), randn(3, 5, seed=2))
    with pytest.warns(DeprecationWarning, match="use .V"):
        vh = fm.Vh
    U, S, V = torch.linalg.svd(fm.A @ fm.B, full_matrices=False)
    assert vh.shape == (5, 3)
    assert_close(vh @ torch.diag(fm.S) @ vh.T, V.T @ torch.diag(S) @ V)
