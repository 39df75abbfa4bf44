"""`SVDInterpreter`: read a head's OV circuit or an MLP's weights through their singular vectors.

Millidge & Black (2022, "The Singular Value Decompositions of Transformer Weight Matrices are
Highly Interpretable") project the top singular vectors of these matrices onto the vocabulary
through the unembedding; the tokens at either end of a vector say what it reads or writes.
The classic `SVDInterpreter` offered this; the vectors taken are the classic ones:

- ``"OV"``: the right singular vectors of ``W_V[h] @ W_O[h]`` (``d_model x d_model``): the
  directions the head writes into the residual stream. Computed with `FactoredMatrix`, in the
  ``d_head``-wide space.
- ``"w_in"``: the left singular vectors of ``W_in`` (``[d_model, d_mlp]``): the residual
  directions the MLP reads (times ln2's weight when the norms are not folded, as the classic
  did). For gated MLPs ``W_in`` is the ungated (linear) branch.
- ``"w_out"``: the right singular vectors of ``W_out`` (``[d_mlp, d_model]``): the directions
  the MLP writes.

Each vector ``v`` becomes ``v @ W_U`` (through ``W_proj_out`` first when ``cfg.d_embed`` is
set), a score per vocabulary token. A singular vector's sign is arbitrary: look at both ends.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor

VectorType = Literal["OV", "w_in", "w_out"]
VECTOR_TYPES = ("OV", "w_in", "w_out")
OUTPUT_EMBEDDING = "unembed.W_U"  # the classic name of the unembedding parameter


class SVDArgumentError(ValueError, AssertionError):
    """A bad argument to `SVDInterpreter.get_singular_vectors`. Also an AssertionError, which the
    classic class raised."""


class SVDIndexError(IndexError, AssertionError):
    """A layer or head index out of range. Also an AssertionError, which the classic class
    raised."""


class SVDInterpreter:
    """Singular vectors of a model's OV circuits and MLP weights, in vocabulary space."""

    def __init__(self, model: Any) -> None:
        self.model = model
        self.cfg = model.cfg

    @property
    def params(self) -> dict[str, Tensor]:
        """The model's parameters by name (the classic attribute)."""
        return dict(self.model.named_parameters())

    @torch.no_grad()
    def get_singular_vectors(
        self,
        vector_type: VectorType,
        layer_index: int,
        num_vectors: int = 10,
        head_index: int | None = None,
    ) -> Tensor:
        """The top `num_vectors` singular vectors of one matrix, projected onto the vocabulary.

        Returns float32 ``[d_vocab, 1, num_vectors]``, the classic shape (column ``i`` of the
        last dim is the i-th singular vector, by descending singular value; ``[:, 0]`` gives
        ``[d_vocab, num_vectors]``). `head_index` is required for ``"OV"`` and ignored for the
        MLP types, as in the classic class; `layer_index` and `head_index` may be negative,
        counting from the end.
        """
        if vector_type not in VECTOR_TYPES:
            raise SVDArgumentError(
                f"vector_type must be one of {VECTOR_TYPES}, got {vector_type!r}."
            )
        layer = _checked_index(layer_index, self.cfg.n_layers, "layer_index")
        if vector_type == "OV":
            if head_index is None:
                raise SVDArgumentError(
                    "vector_type='OV' needs a head_index (the head whose OV circuit); it is "
                    "optional only for w_in and w_out."
                )
            vectors = self._ov_vectors(
                layer, _checked_index(head_index, self.cfg.n_heads, "head_index")
            )
        else:
            vectors = self._mlp_vectors(vector_type, layer)  # [d_model, k], columns by S
        if isinstance(num_vectors, bool) or not isinstance(num_vectors, int) or num_vectors < 1:
            raise SVDArgumentError(f"num_vectors must be an int >= 1, got {num_vectors!r}.")
        if num_vectors > vectors.shape[1]:
            raise SVDArgumentError(
                f"num_vectors={num_vectors}, but this {vector_type} matrix has only "
                f"{vectors.shape[1]} singular vectors (nonzero singular values)."
            )
        unembed = self.model.unembed.W_U_residual.float()  # [d_model, d_vocab]
        vocab = unembed.T @ vectors[:, :num_vectors].to(unembed)  # [d_vocab, num_vectors]
        return vocab[:, None, :]

    def _ov_vectors(self, layer: int, head: int) -> Tensor:
        from anatomist.analysis.factored_matrix import FactoredMatrix

        attn = self.model.blocks[layer].attn
        return FactoredMatrix(attn.W_V[head], attn.W_O[head]).V  # [d_model, rank]

    def _mlp_vectors(self, vector_type: str, layer: int) -> Tensor:
        block = self.model.blocks[layer]
        mlp = getattr(block, "mlp", None)
        if mlp is None or not hasattr(mlp, "W_in"):
            what = "no MLP (attn_only)" if mlp is None else "a mixture of experts, no single W_in"
            raise ValueError(f"Layer {layer} has {what}; {vector_type!r} needs a dense MLP.")
        if vector_type == "w_in":
            W = mlp.W_in.double()  # [d_model, d_mlp]
            norm = _mlp_input_norm(block, self.cfg)
            if norm is not None and hasattr(norm, "w"):  # norms not folded: include ln2's weight
                W = W * norm.multiplier.double()[:, None]  # (Gemma: 1 + w)
            U, _, _ = torch.linalg.svd(W, full_matrices=False)
            return U  # [d_model, min(d_model, d_mlp)]
        _, _, Vh = torch.linalg.svd(mlp.W_out.double(), full_matrices=False)
        return Vh.T  # [d_model, min(d_mlp, d_model)]


def _mlp_input_norm(block: Any, cfg: Any) -> Any:
    """The norm whose output the MLP reads: ln2 (Pre-LN), ln1 (Post-LN blocks), or none."""
    if cfg.pre_norm:
        return block.ln2
    return block.ln1 if cfg.post_layer_norm else None


def _checked_index(index: int, size: int, name: str) -> int:
    if not -size <= index < size:
        raise SVDIndexError(
            f"{name} must be between 0 and {size - 1} (or -{size}..-1 from the end) but got "
            f"{index}."
        )
    return index % size
