"""`ActivationDataset`: a finished harvest folder read back, memory-mapped (Arrow files are
mapped by `datasets`, so opening a corpus of any size costs almost no memory)."""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from anatomist.harvest.run import FORMAT, MANIFEST_FILE, require_datasets


class ActivationDataset(torch.utils.data.Dataset[dict[str, Tensor]]):
    """The rows of a harvest: ``ds[i]`` is ``{hook: [positions, features], "token_ids": ...,
    "row": i}``; `tokens(i)` the row's token ids; `batches` shuffled batches across shards.

    A ``torch.utils.data.Dataset``, so a ``DataLoader`` can read it too.
    """

    def __init__(self, path: str | Path) -> None:
        require_datasets()
        import datasets

        self.path = Path(path)
        manifest_path = self.path / MANIFEST_FILE
        if not manifest_path.is_file():
            raise FileNotFoundError(
                f"{self.path} has no {MANIFEST_FILE}: not a finished harvest (a killed run is "
                "finished by running the same harvest command again)."
            )
        self.manifest: dict[str, Any] = json.loads(manifest_path.read_text())
        if self.manifest.get("format") != FORMAT:
            raise ValueError(
                f"{manifest_path} is format {self.manifest.get('format')!r}, not {FORMAT!r}."
            )
        self.hook_names: list[str] = list(self.manifest["hooks"])
        self._data = datasets.load_from_disk(str(self.path)).with_format("torch")
        if len(self._data) != self.manifest["rows"]:
            raise ValueError(
                f"{self.path} holds {len(self._data)} rows but its manifest says "
                f"{self.manifest['rows']}: the folder is corrupt or was changed."
            )

    def __len__(self) -> int:
        return len(self._data)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"row {index} is out of range for {len(self)} rows.")
        return dict(self._data[index])

    def tokens(self, index: int) -> Tensor:
        """The token ids of row `index` at the kept positions."""
        return self[index]["token_ids"]

    def batches(
        self,
        batch_size: int,
        shuffle: bool = True,
        seed: int = 0,
        columns: Sequence[str] | None = None,
        drop_last: bool = False,
    ) -> Iterator[dict[str, Tensor]]:
        """Batches of rows (``{column: [batch, ...]}``), shuffled across all shards with a
        seeded permutation (the same `seed` gives the same batches), or in order."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be positive, got {batch_size}.")
        wanted = list(columns) if columns is not None else [*self.hook_names, "token_ids", "row"]
        unknown = [c for c in wanted if c not in self._data.column_names]
        if unknown:
            raise KeyError(f"No column {unknown}; the columns are {self._data.column_names}.")
        data = self._data.select_columns(wanted)
        order = (
            torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
            if shuffle
            else torch.arange(len(self))
        )
        for start in range(0, len(self), batch_size):
            chosen = order[start : start + batch_size]
            if drop_last and len(chosen) < batch_size:
                return
            yield dict(data[chosen.tolist()])

    def __repr__(self) -> str:
        return (
            f"ActivationDataset({str(self.path)!r}, rows={len(self)}, "
            f"hooks={self.hook_names}, context_length={self.manifest['context_length']})"
        )
