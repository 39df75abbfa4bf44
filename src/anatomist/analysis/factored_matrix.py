"""FactoredMatrix: a matrix kept as the product ``A @ B`` of two factors, never materialised.

Attention circuits are low rank: a head's OV circuit ``W_V @ W_O`` is ``d_model x d_model`` but
has rank ``d_head``. Keeping the two factors makes products, norms, SVDs and eigenvalues cost
``O(d_model * d_head^2)`` instead of ``O(d_model^3)`` (Elhage et al. 2021, "A Mathematical
Framework for Transformer Circuits").

Shapes: ``A [..., ldim, mdim]``, ``B [..., mdim, rdim]``; the leading dims broadcast against each
other (``QK`` of a whole model is ``[n_layers, n_heads, d_model, d_model]``).

Precision: ``svd()``, ``U``/``S``/``V``/``Vh``, ``norm()``, ``eigenvalues``, ``collapse_l``,
``collapse_r`` and ``make_even`` upcast the factors to float64 and return **float64** results
(complex128 for ``eigenvalues``) whatever the factors' dtype: they are analysis results, small
(``mdim`` wide), and bf16/fp16/fp32 linear algebra would blur the spectrum. ``AB``, ``BA``,
``get_corner`` and ``@`` stay in the factors' dtype, as a plain matmul would. On devices without
float64 (Apple MPS) the float64 work and its results are on the CPU.
"""

from __future__ import annotations

import warnings
from typing import Any, Protocol, runtime_checkable

import torch
from torch import Tensor

IndexEntry = Any  # int, slice, None, Ellipsis, list or index tensor
_SvdKey = float | None


class FactoredMatrixShapeError(ValueError, AssertionError):
    """Factors or operands whose shapes do not fit. Also an AssertionError: the classic class
    asserted these shapes, and code written against it catches that."""


class FactoredMatrixBroadcastError(FactoredMatrixShapeError, RuntimeError):
    """Leading (batch) dims that do not broadcast. Also a RuntimeError, as torch's broadcasting
    error (which the classic class let through) is."""


@runtime_checkable
class TensorLike(Protocol):
    """What a factor or matmul operand that is not a ``torch.Tensor`` must provide (a duck-typed
    wrapper). Such factors support the products (``@``, ``AB``, ``BA``); the linear algebra
    (``svd``, ``norm``, ``eigenvalues``, indexing) needs real tensors."""

    @property
    def ndim(self) -> int: ...

    @property
    def shape(self) -> Any: ...

    def size(self, dim: int) -> int: ...

    def unsqueeze(self, dim: int) -> Any: ...

    def squeeze(self, dim: int) -> Any: ...

    def broadcast_to(self, shape: Any) -> Any: ...

    def __matmul__(self, other: Any) -> Any: ...


def _linalg_device(device: torch.device) -> torch.device:
    # MPS has no float64; everything else (CPU, CUDA, XPU) does.
    return torch.device("cpu") if device.type == "mps" else device


class FactoredMatrix:
    """The lazy product ``A @ B`` of ``A [..., ldim, mdim]`` and ``B [..., mdim, rdim]``.

    >>> fm = FactoredMatrix(torch.randn(12, 64, 8), torch.randn(8, 64))  # 12 matrices 64x64
    >>> fm.shape, fm.mdim
    (torch.Size([12, 64, 64]), 8)
    >>> U, S, V = fm.svd()   # U [12, 64, 8], S [12, 8], V [12, 64, 8]; fm.AB == U @ S.diag() @ V.T

    The leading dims of ``A`` and ``B`` broadcast; afterwards ``A`` and ``B`` are views with the
    full leading shape. Factors of different floating dtypes are promoted to a common one.
    """

    def __init__(self, A: Tensor, B: Tensor) -> None:
        if A.ndim < 2 or B.ndim < 2:
            raise FactoredMatrixShapeError(
                f"FactoredMatrix factors must be matrices (at least 2 dims); got A {tuple(A.shape)},"
                f" B {tuple(B.shape)}"
            )
        if A.size(-1) != B.size(-2):
            raise FactoredMatrixShapeError(
                "FactoredMatrix factors must match on the inner dimension: A is "
                f"{tuple(A.shape)} and B is {tuple(B.shape)} (need A.shape[-1] == B.shape[-2])"
            )
        if isinstance(A, Tensor) and isinstance(B, Tensor) and A.dtype != B.dtype:
            dtype = torch.promote_types(A.dtype, B.dtype)
            A, B = A.to(dtype), B.to(dtype)
        self.ldim: int = A.size(-2)
        self.mdim: int = A.size(-1)
        self.rdim: int = B.size(-1)
        self.has_leading_dims: bool = A.ndim > 2 or B.ndim > 2
        try:
            leading = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        except RuntimeError:
            raise FactoredMatrixBroadcastError(
                "Shape mismatch: FactoredMatrix factors' leading (batch) dims must broadcast "
                f"against each other: A is {tuple(A.shape)} (leading {tuple(A.shape[:-2])}) and B "
                f"is {tuple(B.shape)} (leading {tuple(B.shape[:-2])}); each leading dim must be "
                "equal or 1 in one of them"
            ) from None
        self.shape: torch.Size = torch.Size((*leading, self.ldim, self.rdim))
        self.A: Tensor = A.broadcast_to((*leading, self.ldim, self.mdim))
        self.B: Tensor = B.broadcast_to((*leading, self.mdim, self.rdim))
        self._svd_cache: dict[_SvdKey, tuple[Tensor, Tensor, Tensor]] = {}

    # --- shape and basic views ---------------------------------------------------------------

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.A.dtype

    @property
    def device(self) -> torch.device:
        return self.A.device

    @property
    def pair(self) -> tuple[Tensor, Tensor]:
        """The factors ``(A, B)``."""
        return self.A, self.B

    @property
    def AB(self) -> Tensor:
        """The product ``[..., ldim, rdim]``, materialised (can be large: ``d_model^2`` per head)."""
        return self.A @ self.B

    @property
    def BA(self) -> Tensor:
        """The reverse product ``[..., mdim, mdim]``; defined only for square ``AB``."""
        if self.ldim != self.rdim:
            raise FactoredMatrixShapeError(
                f"BA needs a square product (ldim == rdim); shape is {self.shape}"
            )
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        """The transpose of the last two dims: ``B^T @ A^T``."""
        return FactoredMatrix(self.B.transpose(-2, -1), self.A.transpose(-2, -1))

    def unsqueeze(self, k: int) -> FactoredMatrix:
        """Insert a size-1 leading dim at position ``k`` of the full shape (torch semantics).

        The new dim must land among the leading dims: ``0 <= k <= ndim - 2``, or a negative
        ``k`` with ``-ndim - 1 <= k <= -3``.
        """
        position = k + self.ndim + 1 if k < 0 else k
        if not 0 <= position <= self.ndim - 2:
            raise IndexError(
                f"unsqueeze({k}) on a FactoredMatrix of shape {tuple(self.shape)} would split its "
                f"matrix dims; use 0..{self.ndim - 2} or {-self.ndim - 1}..-3"
            )
        return FactoredMatrix(self.A.unsqueeze(position), self.B.unsqueeze(position))

    def get_corner(self, k: int = 3) -> Tensor:
        """The top-left ``k x k`` corner of ``AB`` (and of the leading dims), cheaply."""
        corner = self.A[..., :k, :] @ self.B[..., :, :k]
        return corner[tuple(slice(k) for _ in range(corner.dim()))]

    def __repr__(self) -> str:
        return f"FactoredMatrix: Shape({self.shape}), Hidden Dim({self.mdim})"

    # --- indexing ---------------------------------------------------------------------------

    def __getitem__(self, idx: IndexEntry | tuple[IndexEntry, ...]) -> FactoredMatrix:
        """Index with numpy semantics over the full shape ``[..., ldim, rdim]``.

        Entries for the leading dims index both factors; an entry for the row dim indexes the
        rows of ``A``, one for the column dim the columns of ``B``. An int there keeps the dim
        (``fm[0, 3]`` is ``[1, rdim]``), as the classic class did, because a FactoredMatrix is
        always a matrix. ``None`` may add leading dims only.
        """
        entries = list(idx) if isinstance(idx, tuple) else [idx]
        n_real = sum(e is not None and e is not Ellipsis for e in entries)
        if n_real > self.ndim:
            raise IndexError(
                f"{idx} is too long an index for a FactoredMatrix of shape {self.shape}"
            )
        if any(e is Ellipsis for e in entries):
            if sum(e is Ellipsis for e in entries) > 1:
                raise IndexError("an index can only have a single ellipsis ('...')")
            at = next(i for i, e in enumerate(entries) if e is Ellipsis)
            entries[at : at + 1] = [slice(None)] * (self.ndim - n_real)
        n_leading = self.ndim - 2
        leading: list[IndexEntry] = []
        matrix: list[IndexEntry] = []
        seen = 0
        for entry in entries:
            if seen < n_leading or (entry is None and not matrix):
                leading.append(entry)
            elif entry is None:
                raise IndexError("None can only add leading dims to a FactoredMatrix")
            else:
                matrix.append(entry)
            seen += entry is not None
        A, B = self.A[tuple(leading)], self.B[tuple(leading)]
        if matrix:
            A = A[..., self._keep_dim(matrix[0], self.ldim), :]
        if len(matrix) == 2:
            B = B[..., :, self._keep_dim(matrix[1], self.rdim)]
        return FactoredMatrix(A, B)

    @staticmethod
    def _keep_dim(entry: IndexEntry, size: int) -> IndexEntry:
        if isinstance(entry, int) or (isinstance(entry, Tensor) and entry.ndim == 0):
            i = int(entry)
            if not -size <= i < size:
                raise IndexError(f"index {i} is out of range for a matrix dim of size {size}")
            i %= size  # the classic slice(i, i + 1) was empty for i = -1
            return slice(i, i + 1)
        return entry

    # --- products ---------------------------------------------------------------------------

    def __matmul__(self, other: Tensor | FactoredMatrix) -> FactoredMatrix | Tensor:
        """``self @ other``: a FactoredMatrix for a matrix or FactoredMatrix, a tensor for a vector.

        The result keeps the smaller inner dim: ``A @ (B @ other)`` when ``rdim > mdim``,
        otherwise ``(A @ B) @ other``.
        """
        if isinstance(other, FactoredMatrix):
            return (self @ other.A) @ other.B
        if other.ndim < 2:  # a vector [rdim] -> [..., ldim]
            return (self.A @ (self.B @ other.unsqueeze(-1))).squeeze(-1)
        if other.size(-2) != self.rdim:
            raise FactoredMatrixShapeError(
                f"matmul shapes do not match: FactoredMatrix {tuple(self.shape)} @ tensor "
                f"{tuple(other.shape)}"
            )
        if self.rdim > self.mdim:
            return FactoredMatrix(self.A, self.B @ other)
        return FactoredMatrix(self.AB, other)

    def __rmatmul__(self, other: Tensor) -> FactoredMatrix | Tensor:
        """``other @ self``: a FactoredMatrix for a matrix, a tensor for a vector ``[ldim]``."""
        if other.size(-1) != self.ldim:
            raise FactoredMatrixShapeError(
                f"matmul shapes do not match: tensor {tuple(other.shape)} @ FactoredMatrix "
                f"{tuple(self.shape)}"
            )
        if other.ndim < 2:  # a vector [ldim] -> [..., rdim]
            return ((other.unsqueeze(-2) @ self.A) @ self.B).squeeze(-2)
        if self.ldim > self.mdim:
            return FactoredMatrix(other @ self.A, self.B)
        return FactoredMatrix(other, self.AB)

    def __mul__(self, scalar: float | Tensor) -> FactoredMatrix:
        """Multiply by a scalar (a number or a one-element tensor); use ``@`` for matrices."""
        if isinstance(scalar, Tensor) and scalar.numel() != 1:
            raise FactoredMatrixShapeError(
                f"FactoredMatrix * tensor needs a one-element tensor, got shape "
                f"{tuple(scalar.shape)}; use @ for matrix products"
            )
        return FactoredMatrix(self.A * scalar, self.B)

    def __rmul__(self, scalar: float | Tensor) -> FactoredMatrix:
        return self * scalar

    # --- float64 linear algebra in the mdim space ---------------------------------------------

    def _float64_factors(self) -> tuple[Tensor, Tensor]:
        device = _linalg_device(self.device)
        return self.A.to(device, torch.float64), self.B.to(device, torch.float64)

    def _core(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``AB = Qa @ M @ Qb^T`` with orthonormal ``Qa [ldim, p]``, ``Qb [rdim, q]`` (float64),
        and ``||A||_F * ||B||_F`` ``[..., 1]``, the scale of the rounding error in ``M``.

        From the reduced QR of ``A`` and ``B^T``; ``M = Ra @ Rb^T`` is only ``p x q`` with
        ``p = min(ldim, mdim)``, ``q = min(rdim, mdim)``.
        """
        A, B = self._float64_factors()
        Qa, Ra = torch.linalg.qr(A)  # [..., ldim, p], [..., p, mdim]
        Qb, Rb = torch.linalg.qr(B.transpose(-2, -1))  # [..., rdim, q], [..., q, mdim]
        scale = torch.linalg.matrix_norm(Ra) * torch.linalg.matrix_norm(Rb)
        return Qa, Ra @ Rb.transpose(-2, -1), Qb, scale[..., None]

    def svd(self, rtol: float | None = None) -> tuple[Tensor, Tensor, Tensor]:
        """The thin SVD of ``AB`` as ``(U, S, V)`` in float64, with ``AB == U @ diag(S) @ V^T``.

        Returns exactly the rank ``r`` of the product: ``U [..., ldim, r]``, ``S [..., r]``
        (descending), ``V [..., rdim, r]``. ``r`` counts the singular values above
        ``rtol * ||A||_F * ||B||_F`` (the size of the rounding error in a product of these
        factors, which does not shrink with the product's own norm); the default ``rtol`` is
        ``max(ldim, mdim, rdim) * eps(float64)``, the numerical rank of the float64 product of the
        given factors. With leading dims, ``r`` is
        the largest rank in the batch and a lower-rank matrix has zeros in its extra slots.
        ``rtol=0`` keeps all ``min(ldim, mdim, rdim)`` values, as the classic class did.

        Factors that were built low-rank and then rounded to a low precision are full rank as
        stored; pass ``rtol`` near that precision's eps to cut at it. Like the classic class
        (and ``torch.svd``), the third element is ``V``, not ``V^T``. Computed in the ``mdim``
        space (QR of each factor, then an SVD of a ``min(ldim, mdim) x min(rdim, mdim)``
        matrix); ``AB`` is never formed.
        """
        if rtol in self._svd_cache:
            return self._svd_cache[rtol]
        Qa, M, Qb, scale = self._core()
        Um, S, Vmh = torch.linalg.svd(M, full_matrices=False)
        tol = (
            max(self.ldim, self.mdim, self.rdim) * torch.finfo(torch.float64).eps
            if rtol is None
            else rtol
        )
        threshold = tol * scale
        keep = torch.gt(S, threshold) if tol > 0 else torch.ones_like(S, dtype=torch.bool)
        rank = int(keep.sum(-1).max()) if keep.numel() else 0
        S = torch.where(keep, S, torch.zeros_like(S))[..., :rank]
        U = Qa @ Um[..., :rank]
        V = Qb @ Vmh[..., :rank, :].transpose(-2, -1)
        self._svd_cache[rtol] = (U, S, V)
        return U, S, V

    @property
    def U(self) -> Tensor:
        """Left singular vectors ``[..., ldim, r]`` (float64)."""
        return self.svd()[0]

    @property
    def S(self) -> Tensor:
        """Singular values ``[..., r]``, descending (float64)."""
        return self.svd()[1]

    @property
    def V(self) -> Tensor:
        """Right singular vectors ``[..., rdim, r]`` (float64): ``AB == U @ diag(S) @ V^T``."""
        return self.svd()[2]

    @property
    def Vh(self) -> Tensor:
        """Deprecated: the classic name for ``V`` ``[..., rdim, r]`` (not transposed, despite the
        name); warns, as the classic 3.x class does."""
        warnings.warn(
            "FactoredMatrix.Vh is V (the right singular vectors, not transposed); use .V, or "
            ".V.transpose(-2, -1) for the transpose.",
            DeprecationWarning,
            stacklevel=2,
        )
        return self.svd()[2]

    @property
    def eigenvalues(self) -> Tensor:
        """The ``mdim`` eigenvalues of ``B @ A`` (complex128), for a square product.

        ``AB`` and ``BA`` share their nonzero eigenvalues (``BAv = kv`` gives ``AB(Av) = k(Av)``),
        so these are the nonzero eigenvalues of ``AB`` plus zeros; order as ``torch.linalg.eig``
        returns them.
        """
        if self.ldim != self.rdim:
            raise FactoredMatrixShapeError(
                f"eigenvalues need a square product (ldim == rdim); shape is {self.shape}"
            )
        A, B = self._float64_factors()
        return torch.linalg.eigvals(B @ A)

    def norm(self) -> Tensor:
        """The Frobenius norm of ``AB`` per leading index ``[...]`` (float64)."""
        return torch.linalg.matrix_norm(self._core()[1])

    def collapse_l(self) -> Tensor:
        """``diag(S) @ V^T`` ``[..., r, rdim]``: ``AB`` with its orthonormal left factor ``U`` removed."""
        U, S, V = self.svd()
        return S[..., :, None] * V.transpose(-2, -1)

    def collapse_r(self) -> Tensor:
        """``U @ diag(S)`` ``[..., ldim, r]``: ``AB`` with its orthonormal right factor removed."""
        U, S, V = self.svd()
        return U * S[..., None, :]

    def make_even(self) -> FactoredMatrix:
        """The same product as ``(U sqrt(S)) @ (sqrt(S) V^T)``: balanced, orthogonal factors."""
        U, S, V = self.svd()
        root = S.sqrt()
        return FactoredMatrix(U * root[..., None, :], root[..., :, None] * V.transpose(-2, -1))
