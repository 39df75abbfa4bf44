"""`harvest`: a corpus -> packed token rows -> hooked forward passes -> shards on disk.

The output folder is a Hugging Face `datasets` dataset (``datasets.load_from_disk(out)``), laid
out as SAELens' cached activations are: one row per token row, one column per hook holding a
``[positions, features]`` array (trailing axes flattened), and ``token_ids`` (int32) for the same
positions. Each shard ``shard_NNNNN/`` is itself a saved dataset of `rows_per_shard` rows; the
top-level ``state.json`` / ``dataset_info.json`` (which join them) and ``manifest.json`` are
written last. See docs/scale.md.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from anatomist.files import fsync, write_json_atomically

FORMAT = "anatomist-harvest/1"
SHARD_BYTES = 64 * 2**20  # activations per shard when rows_per_shard is not given
SETTINGS_FILE = "harvest.json"  # written first: what this folder is a harvest of
MANIFEST_FILE = "manifest.json"  # written last: the harvest is complete
_STORED_DTYPES = {torch.float32: "float32", torch.float16: "float16", torch.float64: "float64"}


def harvest(
    model: Any,
    corpus: Any,
    hooks: str | Sequence[str] | Any,
    out: str | Path,
    *,
    context_length: int = 128,
    batch_size: int = 8,
    prepend_bos: bool = True,
    positions: str | slice | None = None,
    dtype: torch.dtype | str | None = None,
    rows_per_shard: int | None = None,
    max_rows: int | None = None,
    max_tokens: int | None = None,
    text_column: str = "text",
    progress: bool = True,
) -> Path:
    """Run `model` over `corpus` and write the activations of `hooks` to the folder `out`.

    Args:
        model: a loaded `HookedTransformer`, or a name/path for ``from_pretrained``.
        corpus: a `datasets` dataset, a folder (saved dataset, or .txt/.jsonl/.parquet/.arrow
            files), a file, or any iterable of strings (or of dicts with `text_column`).
        hooks: hook names, one name, or a predicate, as ``run_with_cache(names_filter=...)``.
        out: the output folder (created; refused if it holds something else).
        context_length: tokens per row, BOS included. Rows are packed exactly as
            ``utils.tokenize_and_concatenate(..., max_length=context_length,
            add_bos_token=prepend_bos)`` packs them.
        batch_size: rows per forward pass.
        positions: which positions to keep: None or ``"all"``, ``"last"``, or a slice.
        dtype: the stored dtype (float32, float16 or float64); default: the model's.
        rows_per_shard: rows per shard, the unit of writing and resuming. Default: as many as
            make `SHARD_BYTES` (64 MiB) of activations; the writer holds about 3 shards' worth
            at its peak (the buffer, Arrow's copy, the write), whatever the corpus size.
        max_rows / max_tokens: stop after that many rows / whole rows holding at most that many
            tokens; otherwise at the end of the corpus.
        progress: show a progress bar (rows, tokens/s, ETA when the total is known).

    Returns the folder. Re-running the same call on a folder a killed run left continues where
    it stopped (finished shards are kept, the rest is redone); the result is the same as an
    uninterrupted run. Under ``torchrun`` (``torch.distributed`` initialized, or ``WORLD_SIZE``
    > 1 in the environment) rank r writes shards r, r + world, ...; rank 0 writes the manifest.
    """
    from anatomist.corpus import tokenize_and_concatenate
    from anatomist.harvest import distributed
    from anatomist.harvest.texts import iter_texts

    require_datasets()
    model = _model(model, progress)
    if context_length < 2:
        raise ValueError(f"context_length must be at least 2, got {context_length}.")
    if batch_size < 1 or (rows_per_shard is not None and rows_per_shard < 1):
        raise ValueError(
            f"batch_size and rows_per_shard must be positive, got {batch_size} and "
            f"{rows_per_shard}."
        )
    limit = _row_limit(max_rows, max_tokens, context_length)
    hook_names = model.resolve_hook_names(hooks)
    if not hook_names:
        raise ValueError(f"hooks={hooks!r} selects no hook point of this model.")
    stored = _stored_dtype(dtype, model.cfg.dtype)
    keep = _position_slice(positions)
    if model.tokenizer is None:
        raise ValueError("harvest needs the model's tokenizer: load the model with one.")

    if rows_per_shard is None:
        rows_per_shard = _rows_for(model, hook_names, context_length, keep, stored)
    rank, world = distributed.rank_and_world()
    out = Path(out)
    settings = _settings(
        model,
        hook_names,
        context_length,
        prepend_bos,
        positions,
        stored,
        rows_per_shard,
        limit,
        text_column,
    )
    if (out / MANIFEST_FILE).is_file() and _read_json(out / SETTINGS_FILE) == settings:
        return out  # already complete
    if rank == 0:
        _claim(out, settings)
    distributed.barrier()
    done = {int(p.name.split("_")[1]) for p in out.glob("shard_[0-9]*") if p.is_dir()}

    rows = tokenize_and_concatenate(
        iter_texts(corpus, text_column),
        model.tokenizer,
        streaming=True,
        max_length=context_length,
        add_bos_token=prepend_bos,
    )
    shapes: dict[str, list[int]] = {}
    total = 0
    bar = _progress_bar(progress and rank == 0, limit, context_length)
    tag = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()
    try:
        for index, shard_rows in enumerate(_chunks(rows, rows_per_shard, limit)):
            total += len(shard_rows)
            mine = index % world == rank
            if not mine or index in done:
                if bar is not None:
                    bar.update(len(shard_rows) * context_length)
                continue
            columns = _activations(model, shard_rows, hook_names, batch_size, keep, stored, bar)
            shapes = {name: list(columns[name].shape[1:]) for name in hook_names}
            first = index * rows_per_shard
            _write_shard(out, index, columns, shard_rows, first, keep, tag)  # empties `columns`
    finally:
        if bar is not None:
            bar.close()
    if total == 0:
        raise ValueError("The corpus gave no row of tokens to harvest.")
    distributed.barrier()
    if rank == 0:
        _finish(out, settings, hook_names, total, stored, model, shapes)
    distributed.barrier()
    return out


def require_datasets() -> None:
    """Harvests are `datasets` folders: refuse early, with the install line, without it."""
    if importlib.util.find_spec("datasets") is None:
        raise ImportError(
            "anatomist.harvest writes and reads Hugging Face `datasets` folders: "
            "pip install 'anatomist[harvest]' (or pip install datasets)."
        )


# --- the model side ------------------------------------------------------------------------------


def _model(model: Any, progress: bool) -> Any:
    if isinstance(model, str | Path):
        from anatomist import HookedTransformer

        kwargs: dict[str, Any] = {}
        if torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            kwargs["device"] = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"  # a GPU per rank
        return HookedTransformer.from_pretrained(str(model), progress=progress, **kwargs)
    if not hasattr(model, "run_with_cache") or not hasattr(model, "resolve_hook_names"):
        raise TypeError(
            f"model must be a HookedTransformer or a model name, not {type(model).__name__}."
        )
    return model


def _rows_for(
    model: Any, hook_names: list[str], context_length: int, keep: slice, stored: torch.dtype
) -> int:
    """Rows per shard for `SHARD_BYTES`, from the stored size of one row (one forward of a
    row of token 0; the shapes, not the values, matter)."""
    probe = [torch.zeros(context_length, dtype=torch.long)]
    row_bytes = sum(
        a.nbytes for a in _activations(model, probe, hook_names, 1, keep, stored, None).values()
    )
    return max(1, SHARD_BYTES // max(row_bytes, 1))


def _stop_layer(model: Any, hook_names: list[str]) -> int | None:
    """The block after the last hooked one: later blocks, the final norm and the unembedding
    need not run (None: a hook lies outside the blocks, run everything)."""
    from anatomist.analysis.patching import layer_of_hook

    layers = [layer_of_hook(name) for name in hook_names]
    if any(layer is None for layer in layers) or not hasattr(model, "blocks"):
        return None
    return max(layer for layer in layers if layer is not None) + 1


@torch.inference_mode()
def _activations(
    model: Any,
    shard_rows: list[Tensor],
    hook_names: list[str],
    batch_size: int,
    keep: slice,
    stored: torch.dtype,
    bar: Any,
) -> dict[str, np.ndarray]:
    """``{hook: [rows, positions, features]}`` for one shard, computed batch by batch into
    arrays allocated once per shard (the shard buffer; no list of batches to join)."""
    from anatomist.hooks import _position_dim

    device = model.cfg.device
    stop = _stop_layer(model, hook_names)
    numpy_dtype = torch.empty(0, dtype=stored).numpy().dtype
    arrays: dict[str, np.ndarray] = {}
    for start in range(0, len(shard_rows), batch_size):
        batch = torch.stack(shard_rows[start : start + batch_size]).to(device)
        kwargs: dict[str, Any] = {"stop_at_layer": stop} if stop is not None else {}
        # Only the cache is kept: an unneeded output (the logits) must not outlive this call.
        cache = model.run_with_cache(
            batch, names_filter=hook_names, return_cache_object=False, **kwargs
        )[1]
        for name in hook_names:
            value = cache[name]
            position_dim = _position_dim(name, value)
            if position_dim is None:
                raise ValueError(
                    f"{name} has no position axis (a mixture-of-experts expert sees only its "
                    "routed tokens): it cannot be harvested per row."
                )
            value = value.movedim(position_dim, 1)[:, keep].flatten(2)
            if name not in arrays:
                shape = (len(shard_rows), *value.shape[1:])
                arrays[name] = np.empty(shape, dtype=numpy_dtype)
            target = torch.from_numpy(arrays[name][start : start + batch.shape[0]])
            target.copy_(value)  # casts to the stored dtype on the way
        if bar is not None:
            bar.update(batch.numel())  # tokens
    return arrays


# --- rows ----------------------------------------------------------------------------------------


def _row_limit(max_rows: int | None, max_tokens: int | None, context_length: int) -> int | None:
    limits = []
    if max_rows is not None:
        if max_rows < 1:
            raise ValueError(f"max_rows must be positive, got {max_rows}.")
        limits.append(max_rows)
    if max_tokens is not None:
        if max_tokens < context_length:
            raise ValueError(
                f"max_tokens={max_tokens} is less than one row of context_length="
                f"{context_length} tokens."
            )
        limits.append(max_tokens // context_length)
    return min(limits) if limits else None


def _chunks(rows: Any, size: int, limit: int | None) -> Iterator[list[Tensor]]:
    chunk: list[Tensor] = []
    for count, item in enumerate(rows):
        if limit is not None and count == limit:
            break
        chunk.append(item["tokens"])
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _position_slice(positions: str | slice | None) -> slice:
    if positions is None or positions == "all":
        return slice(None)
    if positions == "last":
        return slice(-1, None)
    if isinstance(positions, slice):
        return positions
    raise ValueError(f"positions must be None, 'all', 'last' or a slice, got {positions!r}.")


def _stored_dtype(dtype: torch.dtype | str | None, model_dtype: torch.dtype) -> torch.dtype:
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    chosen = model_dtype if dtype is None else dtype
    if chosen == torch.bfloat16 and dtype is None:
        chosen = torch.float32  # Arrow has no bfloat16: a bfloat16 model's values fit exactly
    if chosen not in _STORED_DTYPES:
        raise ValueError(
            f"dtype={dtype!r} cannot be stored (Arrow arrays hold float16, float32 or float64)."
        )
    return chosen


# --- the folder ----------------------------------------------------------------------------------


def _settings(
    model: Any,
    hook_names: list[str],
    context_length: int,
    prepend_bos: bool,
    positions: str | slice | None,
    stored: torch.dtype,
    rows_per_shard: int,
    limit: int | None,
    text_column: str,
) -> dict[str, Any]:
    """What makes two runs the same harvest (a resumed run must match the folder's)."""
    cfg = model.cfg
    fields = dict(cfg.to_dict() if hasattr(cfg, "to_dict") else vars(cfg))
    for where in ("device", "n_devices"):  # ranks on cuda:0, cuda:1 ... run the same harvest
        fields.pop(where, None)
    config = json.dumps(fields, default=str, sort_keys=True)
    tokenizer = model.tokenizer
    return {
        "format": FORMAT,
        "model": getattr(cfg, "model_name", None),
        "config_sha256": hashlib.sha256(config.encode()).hexdigest(),
        "tokenizer": getattr(tokenizer, "name_or_path", None) or type(tokenizer).__name__,
        "hooks": hook_names,
        "context_length": context_length,
        "prepend_bos": prepend_bos,
        "positions": _describe(positions),
        "dtype": _STORED_DTYPES[stored],
        "rows_per_shard": rows_per_shard,
        "max_rows": limit,
        "text_column": text_column,
    }


def _describe(positions: str | slice | None) -> Any:
    if isinstance(positions, slice):
        return [positions.start, positions.stop, positions.step]
    return positions or "all"


def _claim(out: Path, settings: dict[str, Any]) -> None:
    """Make `out` this harvest's folder, or refuse one that holds something else."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"out={out} is a file; give a folder for the harvest.")
    settings_path = out / SETTINGS_FILE
    if out.is_dir() and any(out.iterdir()):
        if not settings_path.is_file():
            raise FileExistsError(
                f"out={out} is not empty and holds no harvest: choose an empty or new folder."
            )
        found = _read_json(settings_path)
        if found != settings:
            changed = sorted(
                k for k in settings.keys() | found.keys() if settings.get(k) != found.get(k)
            )
            raise ValueError(
                f"out={out} holds a harvest with other settings ({', '.join(changed)} differ): "
                "use another folder, or delete this one to start over."
            )
        for stale in out.glob(".shard_*.tmp*"):  # a killed run's half-written shard
            shutil.rmtree(stale, ignore_errors=True)
        (out / MANIFEST_FILE).unlink(missing_ok=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomically(settings_path, settings)


def _write_shard(
    out: Path,
    index: int,
    columns: dict[str, np.ndarray],
    shard_rows: list[Tensor],
    first_row: int,
    keep: slice,
    tag: str,
) -> None:
    """Write shard `index` under a temporary name, fsync it, then rename it into place.

    The Arrow columns are built over the shard buffer's memory (no copy, no conversion: an
    ``Array2D`` column's storage is a list of lists of the values, given by offsets), and the
    dataset gets a fingerprint from the settings and the shard's place instead of the hash of
    its content that `datasets` would otherwise compute (a third of the write's time)."""
    import datasets
    import pyarrow as pa
    from datasets.table import InMemoryTable

    token_ids = torch.stack(shard_rows)[:, keep].to(torch.int32).numpy()
    features = _features(columns, token_ids.shape[1])
    arrays = {name: _array2d(value, features[name]) for name, value in columns.items()}
    arrays["token_ids"] = pa.FixedSizeListArray.from_arrays(
        pa.array(token_ids.reshape(-1)), token_ids.shape[1]
    )
    arrays["row"] = pa.array(np.arange(first_row, first_row + len(shard_rows), dtype=np.int64))
    table = pa.Table.from_arrays(list(arrays.values()), schema=features.arrow_schema)
    info = datasets.DatasetInfo(features=features)
    fingerprint = hashlib.sha256(f"{tag}/{index}/{first_row}".encode()).hexdigest()[:16]
    dataset = datasets.Dataset(InMemoryTable(table), info=info, fingerprint=fingerprint)
    del arrays, table
    columns.clear()  # the shard buffer goes once Arrow's copy is written
    final = out / f"shard_{index:05d}"
    temporary = out / f".shard_{index:05d}.tmp{os.getpid()}"
    shutil.rmtree(temporary, ignore_errors=True)
    with _quiet_datasets():
        dataset.save_to_disk(str(temporary), num_shards=1)
    for file in temporary.iterdir():
        fsync(file)
    fsync(temporary)
    os.replace(temporary, final)
    fsync(out)


def _array2d(values: np.ndarray, feature: Any) -> Any:
    """`values` ``[rows, a, b]`` as an ``Array2D`` column over the same memory."""
    import pyarrow as pa

    rows, a, b = values.shape
    if values.size >= 2**31:  # Arrow list offsets are int32
        raise ValueError(
            f"A shard of {rows} rows holds {values.size} values of one hook, more than an Arrow "
            "column of lists can index (2**31); pass a smaller rows_per_shard."
        )
    flat = pa.array(values.reshape(-1))
    inner = pa.ListArray.from_arrays(
        pa.array(np.arange(0, rows * a * b + 1, b, dtype=np.int32)), flat
    )
    outer = pa.ListArray.from_arrays(pa.array(np.arange(0, rows * a + 1, a, dtype=np.int32)), inner)
    return pa.ExtensionArray.from_storage(feature(), outer)


def _features(columns: dict[str, np.ndarray], n_positions: int) -> Any:
    import datasets

    spec: dict[str, Any] = {
        name: datasets.Array2D(shape=tuple(value.shape[1:]), dtype=str(value.dtype))
        for name, value in columns.items()
    }
    spec["token_ids"] = datasets.Sequence(datasets.Value("int32"), length=n_positions)
    spec["row"] = datasets.Value("int64")
    return datasets.Features(spec)


def _finish(
    out: Path,
    settings: dict[str, Any],
    hook_names: list[str],
    total: int,
    stored: torch.dtype,
    model: Any,
    shapes: dict[str, list[int]],
) -> None:
    """Join the shards into one dataset (``state.json``), then write the manifest."""
    shards = sorted(p for p in out.glob("shard_[0-9]*") if p.is_dir())
    expected = math.ceil(total / settings["rows_per_shard"])
    if len(shards) != expected:
        raise RuntimeError(
            f"{out} has {len(shards)} shards where {expected} were expected: a rank did not "
            "finish. Run the same command again to complete it."
        )
    first_state = _read_json(shards[0] / "state.json")
    data_files = []
    for shard in shards:
        for entry in _read_json(shard / "state.json")["_data_files"]:
            data_files.append({"filename": f"{shard.name}/{entry['filename']}"})
    state = dict(first_state, _data_files=data_files, _fingerprint=settings["config_sha256"][:16])
    shutil.copyfile(shards[0] / "dataset_info.json", out / "dataset_info.json")
    write_json_atomically(out / "state.json", state)
    if not shapes:  # every shard was written by an earlier run or another rank
        shapes = _shapes_from(shards[0], hook_names)
    manifest = dict(
        settings,
        rows=total,
        tokens=total * settings["context_length"],
        shards=[p.name for p in shards],
        columns={name: shapes[name] for name in hook_names},
        d_vocab=model.cfg.d_vocab,
    )
    write_json_atomically(out / MANIFEST_FILE, manifest)


def _shapes_from(shard: Path, hook_names: list[str]) -> dict[str, list[int]]:
    info = _read_json(shard / "dataset_info.json")
    return {name: list(info["features"][name]["shape"]) for name in hook_names}


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON ({error}): the folder is corrupt.") from None


class _quiet_datasets:
    """Hide `datasets`' own progress bars while a shard is saved (ours counts rows)."""

    def __enter__(self) -> None:
        import datasets

        self._was = datasets.utils.logging.is_progress_bar_enabled()
        datasets.utils.logging.disable_progress_bar()

    def __exit__(self, *exc: object) -> None:
        import datasets

        if self._was:
            datasets.utils.logging.enable_progress_bar()


def _progress_bar(show: bool, limit: int | None, context_length: int) -> Any:
    if not show:
        return None
    from tqdm.auto import tqdm

    total = None if limit is None else limit * context_length
    return tqdm(total=total, unit="tok", unit_scale=True, desc="harvest")
