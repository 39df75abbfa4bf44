"""Text corpora as token rows: `tokenize_and_concatenate` (texts joined with EOS and cut into
rows of a fixed length, the classic training and evaluation format) and the classic
`get_dataset` names of small corpus samples."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

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
    # A streamed dataset may not know its column names; its features then list them.
    columns = getattr(dataset, "column_names", None) or list(
        getattr(dataset, "features", None) or []
    )
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
