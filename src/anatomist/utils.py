"""Small helpers of the classic interface: hook-name shorthands, slices, losses."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from anatomist.analysis.factored_matrix import FactoredMatrix

_LAYER_TYPE_ALIASES = {
    "a": "attn",
    "m": "mlp",
    "b": "",
    "block": "",
    "blocks": "",
    "attention": "attn",
}
_ACT_NAME_ALIASES = {
    "attn": "pattern",
    "attn_logits": "attn_scores",
    "key": "k",
    "query": "q",
    "value": "v",
    "mlp_pre": "pre",
    "mlp_mid": "mid",
    "mlp_post": "post",
}
_ATTN_ACTS = {"k", "v", "q", "z", "rot_k", "rot_q", "result", "pattern", "attn_scores"}
_MLP_ACTS = {"pre", "post", "mid", "pre_linear"}
_NORM_ACTS = {"scale", "normalized"}


def get_act_name(name: str, layer: int | None = None, layer_type: str | None = None) -> str:
    """Full hook name from a shorthand, as the classic library builds it.

    ``get_act_name("k", 6) == "blocks.6.attn.hook_k"``; ``get_act_name("k6")`` likewise;
    ``get_act_name("scale", 4, "ln1") == "blocks.4.ln1.hook_scale"``; ``"attn"`` means the
    pattern and ``"attn_logits"`` the scores; ``get_act_name("scale")`` is the final norm's scale.
    A name that is already full (contains a dot or starts with ``hook_``) is returned unchanged.
    """
    if ("." in name or name.startswith("hook_")) and layer is None and layer_type is None:
        return name
    match = re.fullmatch(r"([a-z_]+?)(\d+)([a-z][a-z0-9_]*)?", name)
    if match is not None and layer is None:
        name, layer, layer_type = match.group(1), int(match.group(2)), match.group(3) or None
    name = _ACT_NAME_ALIASES.get(name, name)
    full = "" if layer is None else f"blocks.{layer}."
    if name in _ATTN_ACTS:
        layer_type = "attn"
    elif name in _MLP_ACTS:
        layer_type = "mlp"
    elif layer_type in _LAYER_TYPE_ALIASES:
        layer_type = _LAYER_TYPE_ALIASES[layer_type]
    if layer_type:
        full += f"{layer_type}."
    full += f"hook_{name}"
    if name in _NORM_ACTS and layer is None:
        full = f"ln_final.{full}"
    return full


class Slice:
    """An index along one axis: None (everything), an int (selects and drops the axis), a
    ``(start, stop[, step])`` tuple, a slice, or a list/array/tensor of indices."""

    def __init__(self, input_slice: Any = None) -> None:
        if isinstance(input_slice, Slice):
            input_slice = input_slice.slice
        if isinstance(input_slice, np.integer) or (
            isinstance(input_slice, Tensor) and input_slice.dim() == 0
        ):
            input_slice = int(input_slice)  # a numpy or 0-d tensor index selects like an int
        if isinstance(input_slice, tuple):
            input_slice = slice(*input_slice)
        elif isinstance(input_slice, list | np.ndarray):
            input_slice = torch.as_tensor(np.asarray(input_slice), dtype=torch.long)
        elif input_slice is not None and not isinstance(input_slice, int | slice | Tensor):
            raise TypeError(f"Cannot build a Slice from {type(input_slice).__name__}.")
        self.slice: int | slice | Tensor | None = input_slice

    def apply(self, tensor: Tensor, dim: int = 0) -> Tensor:
        if self.slice is None:
            return tensor
        index: list[Any] = [slice(None)] * tensor.dim()
        index[dim] = self.slice
        return tensor[tuple(index)]

    def indices(self, max_ctx: int | None = None) -> np.ndarray:
        """The integer indices this slice selects out of ``range(max_ctx)``."""
        if isinstance(self.slice, int):
            return np.array([self.slice])
        if isinstance(self.slice, Tensor):
            return self.slice.cpu().numpy()
        if max_ctx is None:
            raise ValueError("max_ctx is needed to list the indices of a range slice.")
        return np.arange(max_ctx)[self.slice if self.slice is not None else slice(None)]

    def __repr__(self) -> str:
        return f"Slice({self.slice!r})"


def lm_cross_entropy_loss(
    logits: Tensor,
    tokens: Tensor,
    attention_mask: Tensor | None = None,
    per_token: bool = False,
) -> Tensor:
    """Next-token cross-entropy. With a mask, predictions to or from padding are ignored.

    Per token it returns ``[batch, pos - 1]`` (zero where masked); otherwise the mean over the
    predictions that count.
    """
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = tokens[:, 1:].to(logits.device)
    nll = -log_probs.gather(-1, targets[..., None])[..., 0]  # [b, p - 1]
    if attention_mask is None:
        return nll if per_token else nll.mean()
    mask = attention_mask.to(logits.device).bool()
    valid = mask[:, 1:] & mask[:, :-1]
    nll = torch.where(valid, nll, torch.zeros_like(nll))  # not nll * valid: NaN * 0 is NaN
    return nll if per_token else nll.sum() / valid.sum().clamp(min=1)


def lm_accuracy(logits: Tensor, tokens: Tensor, per_token: bool = False) -> Tensor:
    """Fraction of positions where the argmax prediction is the next token."""
    correct = logits[:, :-1].argmax(-1) == tokens[:, 1:].to(logits.device)
    return correct if per_token else correct.float().mean()


def to_numpy(tensor: Any) -> np.ndarray:
    if isinstance(tensor, np.ndarray):
        return tensor
    if isinstance(tensor, list | tuple):
        return np.array(tensor)
    if isinstance(tensor, Tensor | torch.nn.Parameter):
        return tensor.detach().cpu().numpy()
    if isinstance(tensor, int | float | bool | str):
        return np.array(tensor)
    raise TypeError(f"Cannot convert {type(tensor).__name__} to a numpy array.")


def remove_batch_dim(tensor: Tensor) -> Tensor:
    """Drop a leading batch axis of size 1 (returns other tensors unchanged)."""
    return tensor[0] if tensor.dim() > 0 and tensor.shape[0] == 1 else tensor


def get_corner(tensor: Any, n: int = 3) -> Any:
    """The top-left ``n x n x ...`` corner of a tensor (or FactoredMatrix), for quick looks."""
    if hasattr(tensor, "get_corner"):
        return tensor.get_corner(n)
    return tensor[tuple(slice(n) for _ in range(tensor.dim()))]


def test_prompt(
    prompt: str,
    answer: str,
    model: Any,
    prepend_space_to_answer: bool = True,
    print_details: bool = True,
    prepend_bos: bool | None = None,
    top_k: int = 10,
) -> list[tuple[str, float, int]]:
    """Print (and return) the answer tokens' ranks and probabilities, and the top-k predictions.

    Returns, per answer token, ``(token, probability, rank)``.
    """
    if prepend_space_to_answer and not answer.startswith(" "):
        answer = " " + answer
    prompt_tokens = model.to_tokens(prompt, prepend_bos=prepend_bos)
    answer_tokens = model.to_tokens(answer, prepend_bos=False)
    tokens = torch.cat((prompt_tokens, answer_tokens.to(prompt_tokens.device)), dim=1)
    with torch.no_grad():
        logits = model(tokens)
    probs = logits.float().softmax(-1)[0]
    start = prompt_tokens.shape[1] - 1
    results = []
    if print_details:
        print("Tokenized prompt:", model.to_str_tokens(prompt_tokens))
        print("Tokenized answer:", model.to_str_tokens(answer_tokens))
    for i, token in enumerate(answer_tokens[0].tolist()):
        row = probs[start + i]
        rank = int((row > row[token]).sum())
        text = model.to_single_str_token(token)
        results.append((text, float(row[token]), rank))
        if print_details:
            print(
                f"Performance on answer token {text!r}: rank {rank}, prob {float(row[token]):.2%}"
            )
            top = row.topk(top_k)
            for r, (p, t) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
                print(f"  top {r}: {model.to_single_str_token(t)!r} {p:.2%}")
    return results


test_prompt.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


def composition_scores(
    left: FactoredMatrix, right: FactoredMatrix, broadcast_dims: bool = True
) -> Tensor:
    """How much ``left`` feeds ``right``: ``||L R||_F / (||L||_F ||R||_F)``, in ``[0, 1]``.

    ``L = left.AB`` and ``R = right.AB`` in the row-vector convention (``x @ L @ R``), so for
    heads in layers ``i < j`` the classic calls are ``composition_scores(OV_i, QK_j)`` (Q
    composition), ``(OV_i, QK_j.T)`` (K) and ``(OV_i, OV_j)`` (V) (Elhage et al. 2021, "A
    Mathematical Framework for Transformer Circuits", section on composition).

    With ``broadcast_dims`` the result is ``[*left_leading, *right_leading]`` (every left
    matrix against every right one); otherwise the leading dims broadcast against each other.
    Computed in float64 from the factors (no ``d_model x d_model`` product) and returned as
    float64. A zero matrix on either side gives NaN (0 / 0).
    """
    if broadcast_dims:
        n_left, n_right = left.ndim - 2, right.ndim - 2
        for i in range(n_left):
            right = right.unsqueeze(i)
        for i in range(n_right):
            left = left.unsqueeze(n_left + i)
    if left.rdim != right.ldim:
        raise ValueError(
            "composition_scores needs left.rdim == right.ldim; shapes were left "
            f"{tuple(left.shape)}, right {tuple(right.shape)}"
        )
    left = FactoredMatrix(left.A.double(), left.B.double())
    right = FactoredMatrix(right.A.double(), right.B.double())
    product = left @ right
    assert isinstance(product, FactoredMatrix)
    return product.norm() / (left.norm() * right.norm())
