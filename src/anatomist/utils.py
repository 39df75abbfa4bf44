"""Small helpers of the classic interface: hook-name shorthands, slices, losses."""

from __future__ import annotations

import importlib.util
import inspect
import json
import math
import os
import random
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F
from huggingface_hub.constants import HF_HUB_CACHE
from torch import Tensor, nn

from anatomist.analysis.factored_matrix import FactoredMatrix

# The classic utils.sample_logits; it lives with generation, which uses it.
from anatomist.model.generate import sample_logits as sample_logits
from anatomist.model.mlp import XIELU_ALPHA_INIT, XIELU_BETA
from anatomist.model.mlp import xielu as _xielu
from anatomist.model.tokens import check_token_ids

# The classic tokenizer helpers; they live with the models' tokenizer code.
from anatomist.model.tokens import get_attention_mask as get_attention_mask
from anatomist.model.tokens import (
    get_input_with_manually_prepended_bos as get_input_with_manually_prepended_bos,
)
from anatomist.model.tokens import get_tokenizer_with_bos as get_tokenizer_with_bos
from anatomist.model.tokens import get_tokens_with_bos_removed as get_tokens_with_bos_removed

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


class SliceInputError(TypeError, ValueError):
    """A `Slice` built from something that is not an index. Also a ValueError, which the classic
    raised, so code that caught that keeps working."""


# What `Slice` accepts (the classic type alias): None, an int, a (start, stop[, step]) tuple, a
# list of ints, or an array/tensor of indices (or a boolean mask).
SliceInput = (
    int
    | tuple[int]
    | tuple[int, int]
    | tuple[int, int, int]
    | list[int]
    | Tensor
    | np.ndarray
    | None
)


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
            raise SliceInputError(
                f"Cannot build a Slice from {type(input_slice).__name__}: pass None, an int, a "
                "(start, stop[, step]) tuple, a slice, or a list/array/tensor of indices."
            )
        self.slice: int | slice | Tensor | None = input_slice

    @property
    def mode(self) -> str:
        """The classic name of the kind of index: "int", "slice", "array" or "identity"."""
        if self.slice is None:
            return "identity"
        if isinstance(self.slice, int):
            return "int"
        return "slice" if isinstance(self.slice, slice) else "array"

    def apply(self, tensor: Tensor, dim: int = 0) -> Tensor:
        if self.slice is None:
            return tensor
        index: list[Any] = [slice(None)] * tensor.dim()
        index[dim] = self.slice
        return tensor[tuple(index)]

    def indices(self, max_ctx: int | None = None) -> np.ndarray:
        """The integer indices this slice selects out of ``range(max_ctx)``.

        Only an int slice knows them without `max_ctx` (as in the classic library); a list of
        indices is checked against `max_ctx` and its negative entries counted from the end.
        """
        if isinstance(self.slice, int):
            return np.array([self.slice])
        if max_ctx is None:
            raise ValueError(
                f"{self!r}.indices() needs max_ctx, the length of the axis it indexes; only an "
                "int slice has indices without it."
            )
        positions = np.arange(max_ctx)
        if isinstance(self.slice, Tensor):
            return positions[self.slice.cpu().numpy()]
        return positions[self.slice if self.slice is not None else slice(None)]

    def __repr__(self) -> str:
        return f"Slice({self.slice!r})"

    @classmethod
    def unwrap(cls, slice_input: Any) -> Slice:
        """A Slice from a Slice or its input; an int becomes ``[int]``, so it keeps its axis."""
        if isinstance(slice_input, Slice):
            return slice_input
        if isinstance(slice_input, int):
            slice_input = [slice_input]
        return cls(slice_input)


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
    _check_logits_and_tokens(logits, tokens, attention_mask)
    log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
    targets = tokens[:, 1:].to(logits.device)
    nll = -log_probs.gather(-1, targets[..., None])[..., 0]  # [b, p - 1]
    if attention_mask is None:
        return nll if per_token else nll.mean()
    mask = attention_mask.to(logits.device).bool()
    valid = mask[:, 1:] & mask[:, :-1]
    nll = torch.where(valid, nll, torch.zeros_like(nll))  # not nll * valid: NaN * 0 is NaN
    return nll if per_token else nll.sum() / valid.sum().clamp(min=1)


def _check_logits_and_tokens(logits: Tensor, tokens: Tensor, mask: Tensor | None) -> None:
    """Logits ``[b, p, d_vocab]`` and the tokens ``[b, p]`` they were computed from: anything
    else would be gathered or broadcast into a loss over the wrong positions."""
    if logits.dim() != 3 or tokens.dim() != 2 or tokens.shape != logits.shape[:2]:
        raise ValueError(
            f"logits must be [batch, pos, d_vocab] and tokens [batch, pos] of the same batch and "
            f"pos; got logits {tuple(logits.shape)} and tokens {tuple(tokens.shape)}."
        )
    if tokens.is_floating_point():
        raise TypeError(f"tokens must be token ids (ints), got {tokens.dtype}.")
    if mask is not None and mask.shape != tokens.shape:
        raise ValueError(
            f"attention_mask must have the tokens' shape {tuple(tokens.shape)}, got "
            f"{tuple(mask.shape)}."
        )
    if tokens.numel():
        check_token_ids(tokens, logits.shape[-1], "tokens", "the logits' d_vocab")


def lm_accuracy(logits: Tensor, tokens: Tensor, per_token: bool = False) -> Tensor:
    """Fraction of positions where the argmax prediction is the next token."""
    _check_logits_and_tokens(logits, tokens, None)
    correct = logits[:, :-1].argmax(-1) == tokens[:, 1:].to(logits.device)
    return correct if per_token else correct.float().mean()


class ToNumpyTypeError(TypeError, ValueError):
    """`to_numpy` got something it cannot convert. Also a ValueError, which the classic raised."""


def to_numpy(tensor: Any) -> np.ndarray:
    """A numpy array from a tensor (detached, on the CPU; bfloat16, which numpy lacks, becomes
    float32), an array (returned as is), a list, a tuple or a Python scalar."""
    if isinstance(tensor, np.ndarray):
        return tensor
    if isinstance(tensor, list | tuple):
        return np.array(tensor)
    if isinstance(tensor, Tensor):
        tensor = tensor.detach().cpu()
        return (tensor.float() if tensor.dtype == torch.bfloat16 else tensor).numpy()
    if isinstance(tensor, int | float | bool | str):
        return np.array(tensor)
    raise ToNumpyTypeError(
        f"to_numpy got an invalid type: {type(tensor).__name__}; pass a tensor, a numpy array, a "
        "list, a tuple or a Python scalar."
    )


def remove_batch_dim(tensor: Tensor) -> Tensor:
    """Drop a leading batch axis of size 1 (returns other tensors unchanged)."""
    return tensor[0] if tensor.dim() > 0 and tensor.shape[0] == 1 else tensor


def get_corner(tensor: Any, n: int = 3) -> Any:
    """The top-left ``n x n x ...`` corner of a tensor (or FactoredMatrix), for quick looks."""
    if hasattr(tensor, "get_corner"):
        return tensor.get_corner(n)
    return tensor[tuple(slice(n) for _ in range(tensor.dim()))]


def is_square(x: Tensor) -> bool:
    """Whether `x` is a square matrix."""
    return x.dim() == 2 and x.shape[0] == x.shape[1]


def is_lower_triangular(x: Tensor) -> bool:
    """Whether `x` is a square matrix with nothing above the diagonal."""
    return is_square(x) and bool(torch.equal(x, x.tril()))


# --- tokenize_and_concatenate ------------------------------------------------------------------

_TEXTS_PER_BATCH = 1000  # texts packed together, as the classic's datasets.map batches


class TokenDataset(torch.utils.data.Dataset[dict[str, Tensor]]):
    """Rows of packed token ids ``[n_rows, max_length]`` under the column name ``"tokens"``.

    Reads like a ``datasets.Dataset`` in torch format: ``ds[i] == {"tokens": row}``,
    ``ds["tokens"]`` is the whole tensor, and a ``DataLoader`` over it yields
    ``{"tokens": [batch, max_length]}``.
    """

    column_names = ["tokens"]

    def __init__(self, tokens: Tensor) -> None:
        self.tokens = tokens

    def __len__(self) -> int:
        return self.tokens.shape[0]

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, str):
            if index != "tokens":
                raise KeyError(f"The only column is 'tokens', not {index!r}.")
            return self.tokens
        return {"tokens": self.tokens[index]}

    def __repr__(self) -> str:
        return f"TokenDataset(num_rows={len(self)}, max_length={self.tokens.shape[-1]})"


class StreamedTokenDataset(torch.utils.data.IterableDataset[dict[str, Tensor]]):
    """``{"tokens": row}`` rows packed lazily, 1000 texts at a time (``streaming=True``)."""

    def __init__(self, rows: Callable[[], Iterator[Tensor]]) -> None:
        self._rows = rows

    def __iter__(self) -> Iterator[dict[str, Tensor]]:
        for row in self._rows():
            yield {"tokens": row}


def keep_single_column(dataset: Any, col_name: str) -> Any:
    """A ``datasets`` dataset with every column but `col_name` removed."""
    columns = getattr(dataset, "column_names", None) or []
    others = [c for c in columns if c != col_name]
    return dataset.remove_columns(others) if others else dataset


def tokenize_and_concatenate(
    dataset: Any,
    tokenizer: Any,
    streaming: bool = False,
    max_length: int = 1024,
    column_name: str = "text",
    add_bos_token: bool = True,
    num_proc: int = 10,
    set_format: bool = True,
) -> Any:
    """Tokenize texts, join them with EOS and cut the stream into rows of `max_length` tokens.

    The classic helper for training and evaluation data: every text is tokenized, texts are
    joined with the EOS token, and each batch of 1000 texts becomes ``n // seq_len`` rows of
    ``seq_len = max_length - 1`` tokens (``max_length`` without BOS), the leftover tokens dropped;
    with `add_bos_token` every row starts with BOS. A batch shorter than one row becomes a single
    row, padded.

    Args:
        dataset: a ``datasets.Dataset``/``IterableDataset`` (used through its ``map``; the
            ``datasets`` package is not needed otherwise), or any iterable of strings or of dicts
            holding `column_name`.
        tokenizer: a Hugging Face tokenizer (``tokenizer(texts)["input_ids"]``, ``eos_token_id``,
            ``bos_token_id``, ``pad_token_id``).
        streaming: for a plain iterable, pack rows lazily (returns an ``IterableDataset``); for a
            ``datasets`` dataset, map without worker processes.
        num_proc: worker processes of ``datasets.map`` (ignored for plain iterables).
        set_format: give a ``datasets`` result the torch format (``with_format("torch")``); pass
            False to get it as ``map`` returned it (ignored for plain iterables).

    Returns:
        For a ``datasets`` input, the mapped dataset with the single column ``"tokens"`` in torch
        format (as the classic); otherwise a `TokenDataset` (``streaming=False``) or a
        `StreamedTokenDataset`.

    Differences from the classic: each text is tokenized on its own (the classic cut the joined
    text into 20 chunks at arbitrary characters, splitting words at the cuts), no special tokens
    are added inside rows (tokenizers that add BOS themselves leaked it mid-row), and the
    tokenizer is not modified (the classic added a ``<PAD>`` token, whose id can lie outside the
    model's vocabulary; short batches are padded with the pad or else the EOS token).
    """
    seq_len = max_length - 1 if add_bos_token else max_length
    if seq_len < 1:
        raise ValueError(f"max_length={max_length} leaves no room for tokens.")
    if add_bos_token and getattr(tokenizer, "bos_token_id", None) is None:
        raise ValueError(
            "add_bos_token=True, but the tokenizer has no BOS token: pass add_bos_token=False."
        )

    def pack(texts: list[str]) -> Tensor:
        return _pack_texts(texts, tokenizer, seq_len, add_bos_token)

    if type(dataset).__module__.split(".")[0] == "datasets":
        dataset = keep_single_column(dataset, column_name)

        def tokenize_function(examples: dict[str, list[str]]) -> dict[str, np.ndarray]:
            return {"tokens": pack(examples[column_name]).numpy()}

        kwargs: dict[str, Any] = {} if streaming else {"num_proc": num_proc}
        mapped = dataset.map(
            tokenize_function, batched=True, remove_columns=[column_name], **kwargs
        )
        return mapped.with_format("torch") if set_format else mapped

    def rows() -> Iterator[Tensor]:
        for texts in _text_batches(dataset, column_name):
            yield from pack(texts)

    if streaming:
        return StreamedTokenDataset(rows)
    packed = list(rows())
    if not packed:
        raise ValueError("The dataset holds no text to tokenize.")
    return TokenDataset(torch.stack(packed))


def _text_batches(dataset: Iterable[Any], column_name: str) -> Iterator[list[str]]:
    if isinstance(dataset, str):
        raise TypeError("Pass an iterable of texts (a list of strings), not a single string.")
    batch: list[str] = []
    for item in dataset:
        if isinstance(item, str):
            batch.append(item)
        elif isinstance(item, Mapping):
            if column_name not in item:
                raise KeyError(
                    f"A row has no {column_name!r} column (it has {sorted(item)}): "
                    "pass column_name=."
                )
            batch.append(item[column_name])
        else:
            raise TypeError(
                f"Rows must be strings or dicts with a {column_name!r} key, "
                f"got {type(item).__name__}."
            )
        if len(batch) == _TEXTS_PER_BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _pack_texts(texts: list[str], tokenizer: Any, seq_len: int, add_bos_token: bool) -> Tensor:
    """One batch of texts -> ``[rows, seq_len (+1 with BOS)]``; an empty batch -> no rows."""
    eos = getattr(tokenizer, "eos_token_id", None)
    ids: list[int] = []
    for i, text_ids in enumerate(tokenizer(list(texts), add_special_tokens=False)["input_ids"]):
        if i > 0 and eos is not None:
            ids.append(eos)
        ids.extend(text_ids)
    width = seq_len + int(add_bos_token)
    if not ids:
        return torch.empty(0, width, dtype=torch.long)
    tokens = torch.tensor(ids, dtype=torch.long)
    if len(ids) < seq_len:
        pad = getattr(tokenizer, "pad_token_id", None)
        pad = eos if pad is None else pad
        tokens = torch.cat([tokens, torch.full((seq_len - len(ids),), pad or 0)])
    n_rows = tokens.shape[0] // seq_len
    tokens = tokens[: n_rows * seq_len].reshape(n_rows, seq_len)
    if add_bos_token:
        tokens = torch.cat([torch.full((n_rows, 1), tokenizer.bos_token_id), tokens], dim=1)
    return tokens


def test_prompt(
    prompt: str,
    answer: str | list[str],
    model: Any,
    prepend_space_to_answer: bool = True,
    print_details: bool = True,
    prepend_bos: bool | None = None,
    top_k: int = 10,
) -> list[tuple[str, float, int]]:
    """Print (and return) the answer tokens' ranks and probabilities, and the top-k predictions.

    Returns, per answer token, ``(token, probability, rank)``. With a list of answers (as the
    classic), only the next token is compared: one entry per answer, its first token.
    """
    answers = [answer] if isinstance(answer, str) else list(answer)
    if prepend_space_to_answer:
        answers = [a if a.startswith(" ") else " " + a for a in answers]
    prompt_tokens = model.to_tokens(prompt, prepend_bos=prepend_bos)
    start = prompt_tokens.shape[1] - 1
    answer_ids = [model.to_tokens(text, prepend_bos=False) for text in answers]
    if len(answers) > 1:
        answer_ids = [ids[:, :1] for ids in answer_ids]
    if print_details:
        print("Tokenized prompt:", model.to_str_tokens(prompt_tokens))
        if len(answers) > 1:
            print("Tokenized answers:", [model.to_str_tokens(ids) for ids in answer_ids])
        else:
            print("Tokenized answer:", model.to_str_tokens(answer_ids[0]))
    results = []
    for answer_tokens in answer_ids:
        tokens = torch.cat((prompt_tokens, answer_tokens.to(prompt_tokens.device)), dim=1)
        with torch.no_grad():
            logits = model(tokens)
        probs = logits.float().softmax(-1)[0]
        for i, token in enumerate(answer_tokens[0].tolist()):
            row = probs[start + i]
            rank = int((row > row[token]).sum())
            token_text = model.to_single_str_token(token)
            results.append((token_text, float(row[token]), rank))
            if print_details:
                print(
                    f"Performance on answer token {token_text!r}: rank {rank}, "
                    f"logit {float(logits[0, start + i, token]):.2f}, prob {float(row[token]):.2%}"
                )
                top = row.topk(min(top_k, row.shape[-1]))
                for r, (p, t) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
                    print(f"  top {r}: {model.to_single_str_token(t)!r} {p:.2%}")
    if print_details:
        print("Ranks of the answer tokens:", [(t, rank) for t, _, rank in results])
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


def get_matrix_corner(matrix: FactoredMatrix, n: int = 3) -> Tensor:
    """The top-left ``n x n x ...`` corner of a FactoredMatrix's product, as a tensor."""
    return matrix.get_corner(n)


# --- tensors -----------------------------------------------------------------------------------


def transpose(tensor: Tensor) -> Tensor:
    """`tensor` with its last two axes swapped, whatever its leading axes."""
    return tensor.transpose(-1, -2)


def check_structure(t1: Tensor, t2: Tensor, *, verbose: bool = False) -> None:
    """Print whether two matrices order their neighbouring entries alike (a debugging aid).

    For each pair of consecutive rows (then columns) it compares ``t[i] >= t[i + 1]``
    elementwise in both matrices and prints ``PASSED`` or the first kind of mismatch found
    (row indices, else column indices); `verbose` prints every mismatching pair.
    """
    if t1.dim() != 2 or t1.shape != t2.shape:
        raise ValueError(
            f"check_structure compares two matrices of one shape, got {tuple(t1.shape)} and "
            f"{tuple(t2.shape)}."
        )
    mismatches = {}
    for axis, label in ((0, "rows"), (1, "columns")):
        a, b = t1.movedim(axis, 0), t2.movedim(axis, 0)
        if verbose:
            print(f"Checking {label}")
        found = []
        for i in range(a.shape[0] - 1):
            order1, order2 = a[i].ge(a[i + 1]), b[i].ge(b[i + 1])
            if bool((order1 != order2).any()):
                found.append(i)
                if verbose:
                    print(
                        f"\t{label} {i}:{i + 1}\n\tt1: {order1.tolist()}\n\tt2: {order2.tolist()}"
                    )
        mismatches[label] = found
    if mismatches["rows"]:
        print(f"row mismatch: {mismatches['rows']}")
    elif mismatches["columns"]:
        print(f"column mismatch: {mismatches['columns']}")
    else:
        print("PASSED")


def get_offset_position_ids(past_kv_pos_offset: int, attention_mask: Tensor) -> Tensor:
    """Positions ``[batch, pos]`` of the tokens after the first `past_kv_pos_offset`, counting
    only real tokens: a row's first real token is position 0 (its leading padding gets 0 too).

    `attention_mask` ``[batch, offset + pos]`` covers the cached tokens and the new ones.
    """
    positions = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)  # [batch, offset + pos]
    return positions[:, past_kv_pos_offset:]


def get_cumsum_along_dim(tensor: Tensor, dim: int, reverse: bool = False) -> Tensor:
    """Cumulative sum along `dim`; with `reverse`, summed from the end (suffix sums)."""
    if not reverse:
        return tensor.cumsum(dim=dim)
    return tensor.flip(dims=(dim,)).cumsum(dim=dim).flip(dims=(dim,))


def repeat_along_head_dimension(tensor: Tensor, n_heads: int, clone_tensor: bool = True) -> Tensor:
    """``[batch, pos, d_model] -> [batch, pos, n_heads, d_model]``, one copy per head.

    Without `clone_tensor` the result is an expanded view: every head shares the input's memory.
    """
    repeated = tensor.unsqueeze(-2).expand(*tensor.shape[:-1], n_heads, tensor.shape[-1])
    return repeated.clone() if clone_tensor else repeated


def filter_dict_by_prefix(dictionary: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """The entries whose key starts with ``prefix + "."`` (the dot is added when missing), with
    that prefix stripped: ``{"a.b.c": 1, "a.bc": 2}`` and ``"a.b"`` give ``{"c": 1}``."""
    start = prefix if prefix.endswith(".") else prefix + "."
    return {key[len(start) :]: value for key, value in dictionary.items() if key.startswith(start)}


# --- activation functions ----------------------------------------------------------------------


def gelu_new(input: Tensor) -> Tensor:
    """GPT-2's GELU, the tanh approximation ``0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))``."""
    return F.gelu(input, approximate="tanh")


def gelu_fast(input: Tensor) -> Tensor:
    """The same tanh approximation of GELU as `gelu_new` (the name some checkpoints use)."""
    return F.gelu(input, approximate="tanh")


def gelu_pytorch_tanh(input: Tensor) -> Tensor:
    """The tanh approximation of GELU, under Hugging Face's name for it."""
    return F.gelu(input, approximate="tanh")


def solu(input: Tensor) -> Tensor:
    """SoLU, ``x * softmax(x)`` over the last axis (Elhage et al. 2022, "Softmax Linear Units");
    the MLP applies its LayerNorm afterwards."""
    return input * F.softmax(input, dim=-1)


def xielu(input: Tensor) -> Tensor:
    """xIELU (Huang et al. 2024, arXiv:2411.13010) with its initial parameters, ``alpha_p =
    alpha_n = 0.8``, ``beta = 0.5``; the MLP's own xIELU learns its alphas."""
    raw_p = math.log(math.expm1(XIELU_ALPHA_INIT))  # softplus(raw_p) == 0.8
    raw_n = math.log(math.expm1(XIELU_ALPHA_INIT - XIELU_BETA))  # beta + softplus(raw_n) == 0.8
    return _xielu(input, input.new_tensor(raw_p), input.new_tensor(raw_n))


ActivationFunction = Callable[..., Tensor]

# Activation name -> function, the classic table (`ACTIVATION_FN_DICT` in 2.x).
SUPPORTED_ACTIVATIONS: dict[str, ActivationFunction] = {
    "solu": solu,
    "solu_ln": solu,
    "gelu_new": gelu_new,
    "gelu_fast": gelu_fast,
    "silu": F.silu,
    "relu": F.relu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": gelu_pytorch_tanh,
    "xielu": xielu,
}
ACTIVATION_FN_DICT = SUPPORTED_ACTIVATIONS


# --- weight initialisation ---------------------------------------------------------------------

# What `torch.nn.init.calculate_gain` accepts as `nonlinearity`.
NonlinearityType = Literal[
    "linear",
    "conv1d",
    "conv2d",
    "conv3d",
    "conv_transpose1d",
    "conv_transpose2d",
    "conv_transpose3d",
    "sigmoid",
    "tanh",
    "relu",
    "leaky_relu",
    "selu",
]


def calc_fan_in_and_fan_out(tensor: Tensor) -> tuple[int, int]:
    """``(fan_in, fan_out)`` in this library's weight layouts, which multiply from the right.

    ``[d_out]`` (a bias): ``(1, d_out)``; ``[d_in, d_out]``: ``(d_in, d_out)``;
    ``[n_heads, d_model, d_head]`` (an attention weight): ``(d_model, n_heads * d_head)``. torch's
    own helper reads ``[d_out, d_in]`` and would swap them.
    """
    shape = tuple(tensor.shape)
    if len(shape) == 1:
        return 1, shape[0]
    if len(shape) == 2:
        return shape[0], shape[1]
    if len(shape) == 3:
        return shape[1], shape[0] * shape[2]
    raise ValueError(
        f"fan in and fan out are defined for 1-D, 2-D and 3-D weights [n_heads, d_model, d_head], "
        f"got shape {shape}."
    )


def init_xavier_uniform_(param: Tensor, gain: float = 1.0) -> Tensor:
    """Fill `param` in place from U(-a, a), ``a = gain * sqrt(6 / (fan_in + fan_out))``
    (Glorot & Bengio 2010); std ``gain * sqrt(2 / (fan_in + fan_out))``."""
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out))
    return nn.init.uniform_(param, -bound, bound)


def init_xavier_normal_(param: Tensor, gain: float = 1.0) -> Tensor:
    """Fill `param` in place from N(0, std^2), ``std = gain * sqrt(2 / (fan_in + fan_out))``."""
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    return nn.init.normal_(param, mean=0.0, std=gain * math.sqrt(2.0 / (fan_in + fan_out)))


def _kaiming_std(
    param: Tensor, a: float, nonlinearity: NonlinearityType, gain: float, mode: str
) -> float:
    """``gain * calculate_gain(nonlinearity, a) / sqrt(fan)`` (He et al. 2015)."""
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}.")
    fan_in, fan_out = calc_fan_in_and_fan_out(param)
    fan = fan_in if mode == "fan_in" else fan_out
    return gain * nn.init.calculate_gain(nonlinearity, a) / math.sqrt(fan)


def init_kaiming_uniform_(
    param: Tensor,
    a: float = 0,
    nonlinearity: NonlinearityType = "relu",
    gain: float = 1.0,
    mode: str = "fan_in",
) -> Tensor:
    """Fill `param` in place uniformly with std ``gain * calculate_gain(nonlinearity, a) /
    sqrt(fan)``, `fan` being the fan in (or out, with ``mode="fan_out"``) of this library's
    layouts (`calc_fan_in_and_fan_out`)."""
    bound = math.sqrt(3.0) * _kaiming_std(param, a, nonlinearity, gain, mode)
    return nn.init.uniform_(param, -bound, bound)


def init_kaiming_normal_(
    param: Tensor,
    a: float = 0,
    nonlinearity: NonlinearityType = "relu",
    gain: float = 1.0,
    mode: str = "fan_in",
) -> Tensor:
    """Fill `param` in place from N(0, std^2), std as in `init_kaiming_uniform_`."""
    return nn.init.normal_(param, mean=0.0, std=_kaiming_std(param, a, nonlinearity, gain, mode))


# --- defaults that a call can override ---------------------------------------------------------

USE_DEFAULT_VALUE = None  # what an argument holds when the model's default should apply


def override_or_use_default_value(default_flag: Any, override: Any | None = None) -> Any:
    """`override` unless it is None (`USE_DEFAULT_VALUE`), else `default_flag`."""
    return default_flag if override is None else override


def get_nested_attr(obj: Any, attr_str: str) -> Any:
    """``obj.a.b.c`` for ``attr_str="a.b.c"``."""
    for attr in attr_str.split("."):
        obj = getattr(obj, attr)
    return obj


def set_nested_attr(obj: Any, attr_str: str, value: Any) -> None:
    """Set ``obj.a.b.c = value`` for ``attr_str="a.b.c"``."""
    *path, last = attr_str.split(".")
    setattr(get_nested_attr(obj, ".".join(path)) if path else obj, last, value)


class InvalidOverrideError(ValueError, AssertionError):
    """`LocallyOverridenDefaults` got an unknown setting or a value it cannot take. Also an
    AssertionError, which the classic raised."""


class LocallyOverridenDefaults:
    """Within ``with LocallyOverridenDefaults(model, prepend_bos=..., padding_side=...):`` the
    model's defaults are the given values (None keeps a default); on exit they are restored.

    ``prepend_bos`` sets ``model.cfg.default_prepend_bos``; ``padding_side`` sets
    ``model.cfg.default_padding_side`` (which anatomist's tokenizer helpers read) and, when the
    model has a tokenizer, ``model.tokenizer.padding_side`` (which the classic read).
    """

    _VALID: ClassVar[dict[str, tuple[Any, ...]]] = {
        "prepend_bos": (USE_DEFAULT_VALUE, True, False),
        "padding_side": (USE_DEFAULT_VALUE, "left", "right"),
    }

    def __init__(self, model: Any, **overrides: Any) -> None:
        for name, value in overrides.items():
            if name not in self._VALID:
                raise InvalidOverrideError(
                    f"{name!r} is not a default that can be overridden; the ones that can are "
                    f"{sorted(self._VALID)}."
                )
            if not any(value is v or (v is not None and value == v) for v in self._VALID[name]):
                raise InvalidOverrideError(
                    f"{name} must be one of {list(self._VALID[name])}, got {value!r}."
                )
        self.model = model
        self.overrides = overrides
        self._saved: list[tuple[str, Any]] = []

    def _locations(self, name: str) -> list[str]:
        if name == "prepend_bos":
            return ["cfg.default_prepend_bos"]
        locations = ["cfg.default_padding_side"]
        if getattr(self.model, "tokenizer", None) is not None:
            locations.append("tokenizer.padding_side")
        return locations

    def __enter__(self) -> LocallyOverridenDefaults:
        for name, value in self.overrides.items():
            for location in self._locations(name):
                current = get_nested_attr(self.model, location)
                self._saved.append((location, current))
                set_nested_attr(self.model, location, override_or_use_default_value(current, value))
        return self

    def __exit__(self, *exc_info: object) -> None:
        for location, value in reversed(self._saved):
            set_nested_attr(self.model, location, value)
        self._saved = []


# --- environment: libraries, devices, memory --------------------------------------------------


def is_library_available(name: str) -> bool:
    """Whether module `name` is imported or importable, without importing it."""
    return name in sys.modules or importlib.util.find_spec(name) is not None


# The classic library's switch for choosing Apple's MPS backend automatically.
_ALLOW_MPS_ENV = "TRANSFORMERLENS_ALLOW_MPS"
_mps_warned = False


def get_device() -> str:
    """The best device available: ``"cuda"``, else ``"mps"`` when the environment variable
    ``TRANSFORMERLENS_ALLOW_MPS=1`` opts in (MPS has given silently wrong results), else
    ``"cpu"``."""
    if torch.cuda.is_available():
        return "cuda"
    mps = torch.backends.mps
    if mps.is_available() and mps.is_built() and os.environ.get(_ALLOW_MPS_ENV) == "1":
        return "mps"
    return "cpu"


def warn_if_mps(device: str | torch.device) -> None:
    """Warn once per process when `device` is MPS and ``TRANSFORMERLENS_ALLOW_MPS=1`` is unset."""
    global _mps_warned
    if torch.device(device).type != "mps" or _mps_warned or os.environ.get(_ALLOW_MPS_ENV) == "1":
        return
    _mps_warned = True
    warnings.warn(
        f"MPS backend may produce silently incorrect results (PyTorch {torch.__version__}): "
        f"compare against the CPU, and set {_ALLOW_MPS_ENV}=1 to silence this warning.",
        UserWarning,
        stacklevel=2,
    )


@runtime_checkable
class ModelWithCfg(Protocol):
    """A module with a ``cfg`` that records its device and dtype."""

    cfg: Any

    def state_dict(self) -> Any: ...

    def to(self, device_or_dtype: Any) -> Any: ...


def move_to_and_update_config(
    model: Any, device_or_dtype: str | torch.device | torch.dtype, print_details: bool = True
) -> Any:
    """``nn.Module.to(model, device_or_dtype)`` with ``model.cfg.device`` (the device type) or
    ``model.cfg.dtype`` (when the config has one) updated to match."""
    if isinstance(device_or_dtype, torch.dtype):
        if hasattr(model.cfg, "dtype"):
            model.cfg.dtype = device_or_dtype
        message = f"Changing model dtype to {device_or_dtype}"
    else:
        warn_if_mps(device_or_dtype)
        model.cfg.device = torch.device(device_or_dtype).type
        message = f"Moving model to device: {model.cfg.device}"
    if print_details:
        print(message)
    # nn.Module's own `to`: a model's `to` may itself be built on this function.
    return nn.Module.to(model, device_or_dtype)


def print_gpu_mem(step_name: str = "") -> None:
    """Print the GPU memory torch has allocated, in GiB (the classic divided by 2e30, not 2**30,
    so it always printed 0.0)."""
    print(f"{step_name} ~ {torch.cuda.memory_allocated() / 2**30:.2f} GiB allocated on GPU.")


# --- the Hugging Face hub ----------------------------------------------------------------------

CACHE_DIR = HF_HUB_CACHE


class HubFileUnavailableError(FileNotFoundError):
    """A file asked of the Hugging Face hub is neither in the local cache nor downloadable."""


def select_compatible_kwargs(
    kwargs_dict: Mapping[str, Any], callable: Callable[..., Any]
) -> dict[str, Any]:
    """The entries of `kwargs_dict` that name a parameter of `callable`."""
    parameters = inspect.signature(callable).parameters
    return {key: value for key, value in kwargs_dict.items() if key in parameters}


def download_file_from_hf(
    repo_name: str,
    file_name: str,
    subfolder: str = ".",
    cache_dir: str | None = CACHE_DIR,
    force_is_torch: bool = False,
    **kwargs: Any,
) -> Any:
    """`file_name` of hub repo `repo_name` (from the local cache, or downloaded when online):
    a ``.pth`` file (or any, with `force_is_torch`) loaded with ``torch.load(weights_only=True)``
    on the CPU, a ``.json`` file parsed, any other file's local path. Extra keyword arguments
    that ``hf_hub_download`` takes (``revision``, ``token``, ...) are passed on.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError, LocalEntryNotFoundError

    try:
        path = hf_hub_download(
            repo_id=repo_name,
            filename=file_name,
            subfolder=subfolder,
            cache_dir=cache_dir,
            **select_compatible_kwargs(kwargs, hf_hub_download),
        )
    except (LocalEntryNotFoundError, EntryNotFoundError) as error:
        raise HubFileUnavailableError(
            f"{file_name!r} of Hugging Face repo {repo_name!r} is not in the local cache "
            f"({cache_dir}) and could not be downloaded ({type(error).__name__}). Download it "
            "on a machine with network access, or point HF_HUB_CACHE/HF_HOME at a cache that "
            "holds it."
        ) from error
    if path.endswith(".pth") or force_is_torch:
        return torch.load(path, map_location="cpu", weights_only=True)
    if path.endswith(".json"):
        with open(path) as file:
            return json.load(file)
    return path


def clear_huggingface_cache() -> None:
    """Delete the Hugging Face hub cache folder (`CACHE_DIR`) and everything downloaded in it."""
    print("Deleting Hugging Face cache directory and all its contents.")
    shutil.rmtree(CACHE_DIR, ignore_errors=True)


# The classic `get_dataset` names: small (10k-text) samples of common corpora on the hub.
DATASET_ALIASES = {
    "openwebtext": "stas/openwebtext-10k",
    "owt": "stas/openwebtext-10k",
    "pile": "NeelNanda/pile-10k",
    "c4": "NeelNanda/c4-10k",
    "code": "NeelNanda/code-10k",
    "python": "NeelNanda/code-10k",
    "c4_code": "NeelNanda/c4-code-20k",
    "c4-code": "NeelNanda/c4-code-20k",
    "wiki": "NeelNanda/wiki-10k",
}


def get_dataset(dataset_name: str, **kwargs: Any) -> Any:
    """The train split of a small corpus sample by its classic name (`DATASET_ALIASES`: "pile",
    "c4", "code", "owt", "wiki", ...), through ``datasets.load_dataset`` (its local cache when
    offline); `kwargs` go to ``load_dataset``.

    Raises `DatasetUnavailableError` when the ``datasets`` package is missing or the data is
    neither cached nor downloadable.
    """
    from anatomist.analysis.evals import DatasetUnavailableError  # evals imports this module

    if dataset_name not in DATASET_ALIASES:
        raise ValueError(
            f"Dataset {dataset_name!r} is not one of get_dataset's names: "
            f"{sorted(DATASET_ALIASES)}."
        )
    repo = DATASET_ALIASES[dataset_name]
    try:
        import datasets
    except ImportError as error:
        raise DatasetUnavailableError(
            f"get_dataset({dataset_name!r}) needs the 'datasets' package: pip install datasets."
        ) from error
    try:
        return datasets.load_dataset(repo, split="train", **kwargs)
    except (ConnectionError, OSError) as error:
        raise DatasetUnavailableError(
            f"get_dataset({dataset_name!r}) could not load {repo!r} from the hub or the local "
            f"datasets cache ({error}). Load it where the hub is reachable, or pass your own "
            "texts to tokenize_and_concatenate."
        ) from error


def get_rotary_pct_from_config(config: Any) -> float:
    """The fraction of each head's dimensions that rotary embeddings rotate, from a Hugging Face
    config: ``rotary_pct`` (transformers 4), ``rope_parameters["partial_rotary_factor"]``
    (transformers 5), else 1.0."""
    if config is None:
        return 1.0
    if hasattr(config, "rotary_pct"):
        return float(config.rotary_pct)
    rope = getattr(config, "rope_parameters", None)
    if isinstance(rope, dict) and "partial_rotary_factor" in rope:
        return float(rope["partial_rotary_factor"])
    return 1.0


# --- logits and caches -------------------------------------------------------------------------


def logits_to_df(logits: Tensor, tokenizer: Any = None, top_k: int | None = None) -> Any:
    """A pandas DataFrame of one position's logits ``[d_vocab]``, most probable first: columns
    ``token_index``, ``token_string`` (with a tokenizer), ``logit``, ``log_prob``,
    ``probability``; `top_k` keeps that many rows."""
    import pandas as pd

    if logits.dim() != 1:
        raise ValueError(
            f"logits_to_df takes one position's logits [d_vocab], got shape "
            f"{tuple(logits.shape)}; index the batch and position first (logits[0, -1])."
        )
    log_probs = F.log_softmax(logits.detach().float(), dim=-1)
    order = log_probs.argsort(descending=True)[:top_k]
    data: dict[str, list[Any]] = {"token_index": order.tolist()}
    if tokenizer is not None:
        data["token_string"] = [tokenizer.decode([i]) for i in data["token_index"]]
    data["logit"] = logits.detach()[order].cpu().tolist()
    data["log_prob"] = log_probs[order].cpu().tolist()
    data["probability"] = log_probs[order].exp().cpu().tolist()
    return pd.DataFrame(data)


def get_pos_offset(past_kv_cache: Any, batch_size: int) -> int:
    """How many positions `past_kv_cache` already holds: its first layer's key count (0 without
    a cache); `batch_size` is accepted for the classic signature and unused."""
    return 0 if past_kv_cache is None else int(past_kv_cache.entries[0].past_keys.shape[1])


_RETRY_MAX_DELAY_SECONDS = 120.0
_RETRIED = "_anatomist_retries_429"  # marks a from_pretrained already wrapped


def call_hf_with_retry(
    func: Callable[..., Any],
    *args: Any,
    max_attempts: int = 3,
    base_delay: float = 10.0,
    **kwargs: Any,
) -> Any:
    """``func(*args, **kwargs)``, called again when the hub answers HTTP 429 (rate limited).

    Waits the response's ``Retry-After`` seconds, else ``base_delay * 2**attempt`` (at most 120
    s, with +-20% jitter); other errors, and the last 429, propagate.
    """
    for attempt in range(max_attempts):
        try:
            return func(*args, **kwargs)
        except Exception as error:
            response = getattr(error, "response", None)
            if getattr(response, "status_code", None) != 429 or attempt == max_attempts - 1:
                raise
            headers = getattr(response, "headers", None) or {}
            try:
                wait = float(headers.get("Retry-After", ""))
            except (TypeError, ValueError):
                wait = min(base_delay * 2**attempt, _RETRY_MAX_DELAY_SECONDS)
                wait *= random.uniform(0.8, 1.2)
            time.sleep(wait)
    raise ValueError(f"max_attempts must be >= 1, got {max_attempts}.")


def enable_hf_retry() -> None:
    """Make transformers' ``Auto*.from_pretrained`` retry on HTTP 429 (`call_hf_with_retry`), for
    the rest of the process; calling it again changes nothing."""
    import transformers

    for name in ("AutoConfig", "AutoModel", "AutoTokenizer", "AutoProcessor"):
        cls = getattr(transformers, name)
        original = cls.from_pretrained
        if getattr(original, _RETRIED, False):
            continue
        function = original.__func__

        def from_pretrained(klass: Any, *args: Any, _function: Any = function, **kw: Any) -> Any:
            return call_hf_with_retry(_function, klass, *args, **kw)

        setattr(from_pretrained, _RETRIED, True)
        cls.from_pretrained = classmethod(from_pretrained)


ModuleT = TypeVar("ModuleT", bound=nn.Module)


class TypedModuleList(nn.ModuleList, Generic[ModuleT]):
    """An ``nn.ModuleList`` whose type names what it holds (``TypedModuleList[nn.Linear]``); at
    run time exactly an ``nn.ModuleList`` (slicing gives a TypedModuleList)."""
