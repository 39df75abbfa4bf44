"""Where a harvest's texts come from: a `datasets` dataset, a folder of one (saved with
``save_to_disk``) or of Arrow/Parquet files, JSONL files, plain .txt files, or any iterable of
strings. Every source is read lazily, in one fixed order, so a resumed run sees the same rows."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any


def iter_texts(corpus: Any, text_column: str = "text") -> Iterator[str]:
    """The texts of `corpus`, one at a time, always in the same order."""
    if isinstance(corpus, str | Path):
        yield from _texts_at(Path(corpus), text_column)
        return
    if type(corpus).__module__.split(".")[0] == "datasets":
        yield from _column(corpus, text_column)
        return
    if not isinstance(corpus, Iterable):
        raise TypeError(
            f"corpus must be a path, a datasets dataset or an iterable of strings, not "
            f"{type(corpus).__name__}."
        )
    for item in corpus:
        if isinstance(item, str):
            yield item
        elif isinstance(item, dict) and text_column in item:
            yield item[text_column]
        else:
            raise TypeError(
                f"corpus rows must be strings or dicts with a {text_column!r} key, got "
                f"{type(item).__name__}; pass text_column= for another key."
            )


def _column(dataset: Any, text_column: str) -> Iterator[str]:
    names = getattr(dataset, "column_names", None)
    if names is not None and text_column not in names:
        raise KeyError(
            f"The dataset has no {text_column!r} column (it has {sorted(names)}): pass "
            "text_column=."
        )
    for row in dataset:
        yield row[text_column]


def _texts_at(path: Path, text_column: str) -> Iterator[str]:
    if not path.exists():
        raise FileNotFoundError(f"corpus: {path} does not exist.")
    if path.is_file():
        yield from _texts_in_file(path, text_column)
        return
    if (path / "state.json").is_file() or (path / "dataset_dict.json").is_file():
        yield from _column(_load_from_disk(path), text_column)
        return
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in _READERS)
    if not files:
        raise ValueError(
            f"corpus: {path} holds no .txt, .jsonl, .json, .parquet or .arrow file and is not a "
            "dataset saved with save_to_disk."
        )
    for file in files:
        yield from _texts_in_file(file, text_column)


def _texts_in_file(path: Path, text_column: str) -> Iterator[str]:
    reader = _READERS.get(path.suffix)
    if reader is None:
        raise ValueError(
            f"corpus: {path.name} is not a .txt, .jsonl, .json, .parquet or .arrow file."
        )
    yield from reader(path, text_column)


def _txt(path: Path, text_column: str) -> Iterator[str]:
    yield path.read_text(encoding="utf-8")  # one document per file


def _jsonl(path: Path, text_column: str) -> Iterator[str]:
    with path.open(encoding="utf-8") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(
                    f"corpus: {path.name} line {number} is not JSON: {error}"
                ) from None
            if not isinstance(row, dict) or text_column not in row:
                raise KeyError(
                    f"corpus: {path.name} line {number} has no {text_column!r} field: pass "
                    "text_column=."
                )
            yield row[text_column]


def _table(path: Path, text_column: str) -> Iterator[str]:
    import datasets

    kind = "parquet" if path.suffix == ".parquet" else "arrow"
    table = datasets.Dataset.from_file(str(path)) if kind == "arrow" else None
    if table is None:
        table = datasets.Dataset.from_parquet(str(path))
    yield from _column(table, text_column)


def _load_from_disk(path: Path) -> Any:
    import datasets

    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        if "train" not in loaded:
            raise ValueError(
                f"corpus: {path} is a DatasetDict without a 'train' split (it has "
                f"{sorted(loaded)}); pass the split's dataset itself."
            )
        return loaded["train"]
    return loaded


_READERS = {
    ".txt": _txt,
    ".jsonl": _jsonl,
    ".json": _jsonl,
    ".parquet": _table,
    ".arrow": _table,
}
