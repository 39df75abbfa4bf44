"""Small helpers of the classic interface: hook-name shorthands, slices, losses."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from anatomist.analysis.factored_matrix import FactoredMatrix

# The classic utils.sample_logits; it lives with generation, which uses it.
from anatomist.model.generate import sample_logits as sample_logits
from anatomist.model.tokens import check_token_ids

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
        return mapped.with_format("torch")

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
    if print_details:
        print("Tokenized prompt:", model.to_str_tokens(prompt_tokens))
    results = []
    for text in answers:
        answer_tokens = model.to_tokens(text, prepend_bos=False)
        if len(answers) > 1:
            answer_tokens = answer_tokens[:, :1]
        tokens = torch.cat((prompt_tokens, answer_tokens.to(prompt_tokens.device)), dim=1)
        with torch.no_grad():
            logits = model(tokens)
        probs = logits.float().softmax(-1)[0]
        if print_details:
            print("Tokenized answer:", model.to_str_tokens(answer_tokens))
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
