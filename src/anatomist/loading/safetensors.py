"""Read the weights of a Hugging Face model folder one tensor at a time.

Supported layouts, most preferred first: ``model.safetensors``, a sharded safetensors checkpoint
(``model.safetensors.index.json``), ``pytorch_model.bin`` and a sharded ``.bin`` checkpoint
(``pytorch_model.bin.index.json``).

Safetensors files are read tensor by tensor (plain reads, not a memory map, so the process holds
one copy of the weights at its peak); their header is checked against
the file size first, so a truncated download gives a clear :class:`CheckpointError` instead of an
opaque failure inside the reader. ``.bin`` files are only ever opened with
``torch.load(..., weights_only=True)``: a pickle holding anything but tensors is refused.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import pickle
import struct
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import torch

from anatomist.loading.errors import CheckpointError

__all__ = [
    "BIN_INDEX",
    "BIN_SINGLE",
    "SAFETENSORS_INDEX",
    "SAFETENSORS_SINGLE",
    "checkpoint_files",
    "iter_checkpoint_tensors",
    "validate_safetensors_header",
]

SAFETENSORS_SINGLE = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_SINGLE = "pytorch_model.bin"
BIN_INDEX = "pytorch_model.bin.index.json"

#: The safetensors reference implementation refuses headers larger than this.
_MAX_HEADER_BYTES = 100_000_000

#: torch dtypes of the safetensors dtype names (those whose size is a whole number of bytes).
_TORCH_DTYPES: dict[str, torch.dtype] = {
    "BOOL": torch.bool,
    "U8": torch.uint8,
    "I8": torch.int8,
    "I16": torch.int16,
    "U16": torch.uint16,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I32": torch.int32,
    "U32": torch.uint32,
    "F32": torch.float32,
    "F64": torch.float64,
    "I64": torch.int64,
    "U64": torch.uint64,
    "C64": torch.complex64,
    "F8_E5M2": torch.float8_e5m2,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E8M0": torch.float8_e8m0fnu,
}


def _damaged(path: Path, detail: str) -> CheckpointError:
    return CheckpointError(f"Checkpoint file {str(path)!r} is damaged or truncated: {detail}")


def _shards_from_index(folder: Path, index: Path) -> list[Path]:
    """The shard files named by a sharded-checkpoint index, each checked to exist."""
    try:
        data = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise _damaged(index, f"the index is not valid JSON ({error})") from error
    weight_map = data.get("weight_map") if isinstance(data, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise _damaged(index, "the index has no 'weight_map' naming the shard files")
    names = sorted({str(name) for name in weight_map.values()})
    shards: list[Path] = []
    missing: list[str] = []
    for name in names:
        relative = Path(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise _damaged(index, f"shard name {name!r} points outside {str(folder)!r}")
        shard = folder / relative
        if shard.is_file():
            shards.append(shard)
        else:
            missing.append(name)
    if missing:
        raise CheckpointError(
            f"The index {str(index)!r} names shard file(s) missing from {str(folder)!r}: "
            f"{', '.join(missing)}. The download is incomplete; fetch the missing shards again."
        )
    return shards


def checkpoint_files(folder: Path) -> list[Path]:
    """The weight files of a Hugging Face model folder, in reading order.

    Looks for, in this order: ``model.safetensors``, ``model.safetensors.index.json`` (the
    shards it names), ``pytorch_model.bin``, ``pytorch_model.bin.index.json``, and last a single
    ``*.pth``/``*.pt`` state dict (classic HookedTransformer checkpoints). Safetensors are
    preferred whenever both formats are present.

    Raises:
        CheckpointError: None of them is present, or an index is damaged or names a missing shard.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"Checkpoint folder {str(folder)!r} does not exist.")
    for single, index in ((SAFETENSORS_SINGLE, SAFETENSORS_INDEX), (BIN_SINGLE, BIN_INDEX)):
        if (folder / single).is_file():
            return [folder / single]
        if (folder / index).is_file():
            return _shards_from_index(folder, folder / index)
    # The classic HookedTransformer checkpoints (toy models) ship one pickled state dict.
    pickled = sorted(p for p in folder.iterdir() if p.suffix in (".pth", ".pt") and p.is_file())
    if len(pickled) == 1:
        return pickled
    looked_for = ", ".join((SAFETENSORS_SINGLE, SAFETENSORS_INDEX, BIN_SINGLE, BIN_INDEX, "*.pth"))
    present = sorted(p.name for p in folder.iterdir())
    shown = ", ".join(present[:15]) + (", ..." if len(present) > 15 else "")
    raise CheckpointError(
        f"No model weights in {str(folder)!r}: looked for {looked_for}. "
        f"The folder holds: {shown or 'nothing'}."
    )


def validate_safetensors_header(path: Path) -> dict[str, Any]:
    """Check a safetensors file's header against its size and return the parsed header.

    The format is an 8-byte little-endian header length, a JSON header mapping tensor names to
    ``dtype``, ``shape`` and ``data_offsets`` (relative to the end of the header), then the data.

    Raises:
        CheckpointError: The file is shorter than its header says, or the header is malformed.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                raise _damaged(
                    path, f"the file holds only {size} bytes, less than an 8-byte header"
                )
            (header_len,) = struct.unpack("<Q", prefix)
            if header_len > _MAX_HEADER_BYTES:
                raise _damaged(path, f"implausible header length {header_len} (not safetensors?)")
            if 8 + header_len > size:
                raise _damaged(
                    path,
                    f"the header claims {header_len} bytes but the file holds only {size} bytes",
                )
            raw = handle.read(header_len)
    except OSError as error:
        raise CheckpointError(f"Cannot read checkpoint file {str(path)!r}: {error}") from error
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise _damaged(path, f"the header is not valid JSON ({error})") from error
    if not isinstance(header, dict):
        raise _damaged(path, "the header is not a JSON object")

    data_bytes = size - 8 - header_len
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if not isinstance(info, dict):
            raise _damaged(path, f"the header entry for tensor {name!r} is not an object")
        offsets = info.get("data_offsets")
        shape = info.get("shape")
        dtype = info.get("dtype")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(o, int) and o >= 0 for o in offsets)
            or offsets[0] > offsets[1]
        ):
            raise _damaged(path, f"tensor {name!r} has invalid data_offsets {offsets!r}")
        if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
            raise _damaged(path, f"tensor {name!r} has invalid shape {shape!r}")
        if not isinstance(dtype, str):
            raise _damaged(path, f"tensor {name!r} has no dtype name (got {dtype!r})")
        begin, end = offsets
        if end > data_bytes:
            raise _damaged(
                path,
                f"tensor {name!r} ends at data byte {end} but the file holds only {data_bytes} "
                "bytes of tensor data",
            )
        stored = _TORCH_DTYPES.get(str(dtype))
        itemsize = None if stored is None else stored.itemsize
        if itemsize is not None and (end - begin) != math.prod(shape) * itemsize:
            raise _damaged(
                path,
                f"tensor {name!r} ({dtype}, shape {shape}) should take "
                f"{math.prod(shape) * itemsize} bytes but its offsets span {end - begin}",
            )
    return header


def _cast(tensor: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
    """Cast floating-point tensors to ``dtype``; integer and bool tensors are left as they are."""
    if dtype is None or tensor.dtype == dtype or not tensor.is_floating_point():
        return tensor
    return tensor.to(dtype)


def _fresh_bytes(size: int) -> torch.Tensor:
    """`size` bytes of anonymous memory of their own (a private mapping, not the C heap).

    A tensor that the family's conversion copies (a transposed projection) is dropped right
    after; from the heap, such short-lived buffers between long-lived weights fragment it and
    the process keeps hundreds of MB it no longer uses. A mapping is returned to the system as
    soon as its tensor is freed.
    """
    if size == 0:
        return torch.empty(0, dtype=torch.uint8)
    return torch.frombuffer(mmap.mmap(-1, size), dtype=torch.uint8)


def _iter_safetensors(path: Path, dtype: torch.dtype | None) -> Iterator[tuple[str, torch.Tensor]]:
    """Read each tensor with plain file reads into memory of its own.

    Not memory-mapped: pages of a mapped file count in the process's resident memory until the
    file is closed, so mapping and copying would hold two copies of the weights at the peak.
    Reading tensor by tensor holds one (plus the tensor being converted), and the tensors
    handed out own their memory.
    """
    header = validate_safetensors_header(path)
    entries = sorted(
        ((name, info) for name, info in header.items() if name != "__metadata__"),
        key=lambda item: item[1]["data_offsets"][0],
    )
    try:
        with path.open("rb") as handle:
            (header_len,) = struct.unpack("<Q", handle.read(8))
            start = 8 + header_len
            for name, info in entries:
                stored = _TORCH_DTYPES.get(str(info["dtype"]))
                if stored is None:
                    raise _damaged(path, f"tensor {name!r} has unknown dtype {info['dtype']!r}")
                begin, end = info["data_offsets"]
                raw = _fresh_bytes(end - begin)
                handle.seek(start + begin)
                if end > begin and handle.readinto(raw.numpy()) != end - begin:  # type: ignore[arg-type]
                    raise _damaged(path, f"tensor {name!r} ends past the end of the file")
                tensor = raw.view(stored).reshape(info["shape"])
                tensor.owned_by_loader = True  # type: ignore[attr-defined] # see fill_weights
                yield name, _cast(tensor, dtype)
    except OSError as error:
        raise CheckpointError(f"Cannot read checkpoint file {str(path)!r}: {error}") from error


def _torch_load(path: Path) -> Any:
    """``torch.load`` restricted to tensors (``weights_only=True``), memory-mapped when possible."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError as error:
        if "mmap can only be used" not in str(error):
            raise
    # Files written in torch's pre-1.6 (non-zip) format cannot be memory-mapped; weights_only
    # still applies.
    return torch.load(path, map_location="cpu", weights_only=True)


def _iter_bin(path: Path, dtype: torch.dtype | None) -> Iterator[tuple[str, torch.Tensor]]:
    try:
        state = _torch_load(path)
    except pickle.UnpicklingError as error:
        if "weights only load failed" in str(error).lower():
            raise CheckpointError(
                f"Checkpoint file {str(path)!r} was refused: it pickles Python objects other than "
                "tensors, and anatomist only loads .bin files with torch.load(weights_only=True) "
                "so that a checkpoint cannot run code. Convert it to safetensors from a trusted "
                f"environment. ({str(error).splitlines()[0]})"
            ) from error
        raise _damaged(path, str(error)) from error
    except Exception as error:  # a malformed pickle can fail in many ways (KeyError, EOFError...)
        raise _damaged(path, f"{type(error).__name__}: {error}") from error
    if not isinstance(state, Mapping):
        raise CheckpointError(
            f"Checkpoint file {str(path)!r} holds a {type(state).__name__}, not a state dict "
            "mapping names to tensors."
        )
    for key in list(state):
        # Drop the loader's reference as each tensor is handed out.
        value = state.pop(key) if isinstance(state, dict) else state[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"Checkpoint file {str(path)!r} is not a plain state dict: entry {key!r} is a "
                f"{type(value).__name__}, not a tensor."
            )
        yield str(key), _cast(value, dtype)


def iter_checkpoint_tensors(
    folder: Path, *, dtype: torch.dtype | None = None
) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every tensor of a Hugging Face model folder, one at a time.

    Safetensors tensors are read one at a time, each into memory of its own; ``.bin``
    files are memory-mapped by ``torch.load(mmap=True, weights_only=True)``.

    Args:
        folder: A folder with ``config.json`` and weights (see :func:`checkpoint_files`).
        dtype: If given, floating-point tensors are cast to it as they are yielded; integer and
            bool tensors (masks, position ids) keep their dtype.

    Raises:
        CheckpointError: No weights, a missing shard, a damaged or truncated file, or a ``.bin``
            file that holds more than tensors.
    """
    for path in checkpoint_files(Path(folder)):
        if path.name.endswith(".safetensors"):
            yield from _iter_safetensors(path, dtype)
        elif path.name.endswith(".bin") or os.path.splitext(path.name)[1] in (".pt", ".pth"):
            yield from _iter_bin(path, dtype)
        else:
            raise CheckpointError(
                f"Checkpoint file {str(path)!r} is neither .safetensors nor .bin; cannot read it."
            )
