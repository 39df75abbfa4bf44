"""The GGUF container format: header parsing, memory-mapped tensor data, dequantization.

This module knows GGUF (v2/v3, little-endian) and nothing about models: what the metadata and
tensor names mean is `anatomist.loading.gguf`'s business. The header is parsed straight from a
memory map of the file; a vocabulary of ~100k strings takes a few hundredths of a second, where
``gguf.GGUFReader``, which builds a numpy view per string, takes seconds. Every read is checked
against the file's length, so a damaged file is reported as such.
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from anatomist.loading.errors import CheckpointError

GGUF_MAGIC = b"GGUF"

# --------------------------------------------------------------------------------------------
# Parsing the file
# --------------------------------------------------------------------------------------------

_SUPPORTED_VERSIONS = (2, 3)  # v1 counted in 32 bits and is long gone
_DEFAULT_ALIGNMENT = 32

# Metadata value types (GGUF spec numbering).
FLOAT32, STRING, ARRAY = 6, 8, 9
_SCALARS: dict[int, struct.Struct] = {
    value_type: struct.Struct(fmt)
    for value_type, fmt in {
        0: "<B",
        1: "<b",
        2: "<H",
        3: "<h",
        4: "<I",
        5: "<i",
        6: "<f",
        7: "<?",
        10: "<Q",
        11: "<q",
        12: "<d",
    }.items()
}
_ARRAY_DTYPES: dict[int, np.dtype[Any]] = {
    value_type: np.dtype(dtype)
    for value_type, dtype in {
        0: "u1",
        1: "i1",
        2: "<u2",
        3: "<i2",
        4: "<u4",
        5: "<i4",
        6: "<f4",
        7: "?",
        10: "<u8",
        11: "<i8",
        12: "<f8",
    }.items()
}
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_PREAMBLE = struct.Struct("<4sIQQ")  # magic, version, tensor count, metadata count
_ARRAY_HEAD = struct.Struct("<IQ")  # item type, item count
_TENSOR_TAIL = struct.Struct("<IQ")  # ggml type, offset into the data section

# ggml tensor types stored as plain values (typed numpy views, like gguf.GGUFReader's); every
# other type is stored in blocks and is viewed as bytes.
PLAIN_TENSOR_DTYPES: dict[int, np.dtype[Any]] = {
    ggml_type: np.dtype(dtype)
    for ggml_type, dtype in {
        0: "<f4",  # F32
        1: "<f2",  # F16
        24: "i1",  # I8
        25: "<i2",  # I16
        26: "<i4",  # I32
        27: "<i8",  # I64
        28: "<f8",  # F64
    }.items()
}


class _Malformed(Exception):
    """The header contradicts itself or the file's length; the message says where."""


@dataclass(frozen=True)
class TensorInfo:
    """One entry of the tensor table."""

    name: str
    dims: tuple[int, ...]  # GGUF order: fastest-varying first (the reverse of numpy's shape)
    ggml_type: int
    offset: int  # from the start of the data section
    n_elements: int
    n_bytes: int
    data_offset: int  # from the start of the file


class _HeaderParser:
    """Walks a GGUF header in a bytes-like buffer, checking every read against its length."""

    def __init__(self, buffer: Any) -> None:
        self.buffer = buffer
        self.size = len(buffer)
        self.pos = 0
        self.undecodable = False  # set when a string value is not valid UTF-8

    def need(self, n_bytes: int, what: str) -> None:
        if self.pos + n_bytes > self.size:
            raise _Malformed(
                f"{what} at byte {self.pos} needs {n_bytes} bytes but only "
                f"{self.size - self.pos} remain"
            )

    def unpack(self, layout: struct.Struct, what: str) -> tuple[Any, ...]:
        self.need(layout.size, what)
        values = layout.unpack_from(self.buffer, self.pos)
        self.pos += layout.size
        return values

    def raw_string(self, what: str) -> bytes:
        (length,) = self.unpack(_U64, what)
        self.need(length, what)
        start = self.pos
        self.pos += length
        return bytes(self.buffer[start : self.pos])

    def name(self, what: str) -> str:
        """A key or tensor name: must be UTF-8."""
        raw = self.raw_string(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise _Malformed(f"{what} {raw[:40]!r} is not valid UTF-8 ({error})") from error

    def string(self, what: str) -> str | bytes:
        """A string value; kept as bytes (and flagged) when it is not valid UTF-8."""
        raw = self.raw_string(what)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            self.undecodable = True
            return raw

    def strings(self, count: int, what: str) -> list[str | bytes]:
        """``count`` strings in a row: the vocabulary and merges, ~100k strings, hence the
        tight loop (a length read and a slice per string)."""
        buffer, size, start = self.buffer, self.size, self.pos
        unpack = _U64.unpack_from
        values: list[str | bytes] = []
        append = values.append
        pos = start
        try:
            for _ in range(count):
                (length,) = unpack(buffer, pos)
                end = pos + 8 + length
                if end > size:
                    break
                append(str(buffer[pos + 8 : end], "utf-8"))
                pos = end
            else:
                self.pos = pos
                return values
        except struct.error:
            pass  # a length cut off by the end of the file
        except UnicodeDecodeError:
            self.pos = start  # some string is not UTF-8: walk again, keeping those as bytes
            return [self.string(what) for _ in range(count)]
        self.pos = pos
        raise _Malformed(
            f"{what}: string {len(values)} of {count} at byte {pos} runs past the end of the file"
        )

    def value(self, value_type: int, what: str) -> tuple[Any, tuple[int, ...]]:
        """``(value, types)``: ``types`` as ``gguf.GGUFReader`` lists them: ``(type,)`` for a
        scalar, ``(9, item type...)`` for a non-empty array and ``(9,)`` for an empty one."""
        scalar = _SCALARS.get(value_type)
        if scalar is not None:
            return self.unpack(scalar, what)[0], (value_type,)
        if value_type == STRING:
            return self.string(what), (STRING,)
        if value_type != ARRAY:
            raise _Malformed(f"{what} has unknown value type {value_type}")

        item_type, count = self.unpack(_ARRAY_HEAD, what)
        dtype = _ARRAY_DTYPES.get(item_type)
        if dtype is not None:
            n_bytes = count * dtype.itemsize
            self.need(n_bytes, f"{what} ({count} values of type {item_type})")
            array = np.frombuffer(self.buffer, dtype=dtype, count=count, offset=self.pos).copy()
            self.pos += n_bytes
            return array, ((ARRAY, item_type) if count else (ARRAY,))
        if item_type == STRING:
            return self.strings(count, what), ((ARRAY, STRING) if count else (ARRAY,))
        if item_type == ARRAY:
            items: list[Any] = []
            types: tuple[int, ...] = (ARRAY,)
            for index in range(count):
                item, item_types = self.value(ARRAY, what)
                if index == 0:
                    types = (ARRAY, *item_types)
                items.append(item)
            return items, types
        raise _Malformed(f"{what} is an array of unknown value type {item_type}")


class GGUFFile:
    """A GGUF file's parsed header, with its tensor data memory-mapped.

    Attributes:
        path: The file.
        size: Its length in bytes.
        version: The GGUF version (2 or 3).
        metadata: Every key-value pair, in file order. Scalars are Python ``int``, ``float``,
            ``bool`` or ``str``; arrays of numbers are numpy arrays (little-endian dtypes),
            arrays of strings are lists of ``str``, arrays of arrays are lists. A string that
            is not valid UTF-8 is kept as ``bytes`` and its key listed in ``undecodable``.
        types: For each key, its value types as ``gguf.GGUFReader``'s ``ReaderField.types``.
        tensors: The tensor table, in file order.
        alignment: ``general.alignment`` (32 when absent).
        data_start: Where the data section begins.
    """

    def __init__(self, path: Path, buffer: Any) -> None:
        self.path = path
        self._buffer = buffer
        self.size = len(buffer)
        parser = _HeaderParser(buffer)
        magic, self.version, tensor_count, kv_count = parser.unpack(_PREAMBLE, "the file header")
        if magic != GGUF_MAGIC:
            raise _Malformed(f"it starts with {magic!r}, not {GGUF_MAGIC!r}")
        if self.version not in _SUPPORTED_VERSIONS:
            hint = " (a big-endian file?)" if self.version & 0xFFFF == 0 else ""
            raise _Malformed(
                f"its header says GGUF version {self.version}{hint}; anatomist reads versions "
                + " and ".join(map(str, _SUPPORTED_VERSIONS))
            )

        self.metadata: dict[str, Any] = {}
        self.types: dict[str, tuple[int, ...]] = {}
        self.undecodable: set[str] = set()
        for index in range(kv_count):
            key = parser.name(f"the key of metadata entry {index}")
            if key in self.metadata:
                raise _Malformed(f"metadata key {key!r} appears twice")
            (value_type,) = parser.unpack(_U32, f"the type of metadata key {key!r}")
            parser.undecodable = False
            value, types = parser.value(value_type, f"the value of metadata key {key!r}")
            self.metadata[key], self.types[key] = value, types
            if parser.undecodable:
                self.undecodable.add(key)

        self.alignment = _DEFAULT_ALIGNMENT
        if "general.alignment" in self.metadata:
            if self.types["general.alignment"] != (4,):
                raise _Malformed("general.alignment is not a uint32")
            self.alignment = self.metadata["general.alignment"]
            if self.alignment <= 0 or self.alignment & (self.alignment - 1):
                raise _Malformed(f"general.alignment {self.alignment} is not a power of two")

        from gguf.constants import GGML_QUANT_SIZES, GGMLQuantizationType

        entries = []
        seen: set[str] = set()
        for index in range(tensor_count):
            name = parser.name(f"the name of tensor {index}")
            if name in seen:
                raise _Malformed(f"tensor {name!r} appears twice")
            seen.add(name)
            (n_dims,) = parser.unpack(_U32, f"the rank of tensor {name!r}")
            parser.need(8 * n_dims, f"the shape of tensor {name!r}")
            dims = parser.unpack(struct.Struct(f"<{n_dims}Q"), f"the shape of tensor {name!r}")
            ggml_type, offset = parser.unpack(_TENSOR_TAIL, f"the type of tensor {name!r}")
            try:
                block_size, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
            except (ValueError, KeyError) as error:
                raise _Malformed(f"tensor {name!r} has unknown ggml type {ggml_type}") from error
            row = dims[0] if dims else 1
            if row % block_size:
                raise _Malformed(
                    f"tensor {name!r} has rows of {row} values, not a multiple of the "
                    f"{block_size}-value blocks of its type {GGMLQuantizationType(ggml_type).name}"
                )
            n_elements = math.prod(dims)
            entries.append(
                (name, dims, ggml_type, offset, n_elements, n_elements // block_size * type_size)
            )

        # The data section starts at the first alignment boundary after the tensor table.
        self.data_start = -(-parser.pos // self.alignment) * self.alignment
        self.tensors = [
            TensorInfo(name, dims, ggml_type, offset, n_elements, n_bytes, self.data_start + offset)
            for name, dims, ggml_type, offset, n_elements, n_bytes in entries
        ]

    def tensor_data(self, info: TensorInfo) -> np.ndarray:
        """The stored values of a tensor, a read-only view of the memory map shaped as
        ``gguf.GGUFReader`` shapes ``ReaderTensor.data``: typed and in numpy order for plain
        types, bytes with rows of whole blocks for block-quantized ones."""
        from gguf.constants import GGMLQuantizationType
        from gguf.quants import quant_shape_to_byte_shape

        shape = tuple(reversed(info.dims))
        dtype = PLAIN_TENSOR_DTYPES.get(info.ggml_type)
        if dtype is not None:
            data = np.frombuffer(
                self._buffer, dtype=dtype, count=info.n_elements, offset=info.data_offset
            )
            return data.reshape(shape)
        data = np.frombuffer(
            self._buffer, dtype=np.uint8, count=info.n_bytes, offset=info.data_offset
        )
        return data.reshape(quant_shape_to_byte_shape(shape, GGMLQuantizationType(info.ggml_type)))


def open_gguf_file(path: Path) -> GGUFFile:
    """Memory-map ``path`` and parse its header, turning every failure into a CheckpointError."""
    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(GGUF_MAGIC))
            size = os.fstat(handle.fileno()).st_size
            buffer = (
                mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
                if magic == GGUF_MAGIC
                else None
            )
    except FileNotFoundError as error:
        raise CheckpointError(f"GGUF file not found: {path}") from error
    except IsADirectoryError as error:
        raise CheckpointError(f"expected a GGUF file but {path} is a directory") from error
    except (OSError, ValueError) as error:
        raise CheckpointError(f"cannot read GGUF file {path}: {error}") from error

    if buffer is None:
        if len(magic) < len(GGUF_MAGIC):
            raise CheckpointError(
                f"GGUF file {path} is damaged or truncated: it is only {size} bytes long"
            )
        raise CheckpointError(
            f"{path} is not a GGUF file: it starts with {magic!r}, not {GGUF_MAGIC!r}"
        )

    try:
        gguf_file = GGUFFile(path, buffer)
    except _Malformed as error:
        raise CheckpointError(
            f"GGUF file {path} is damaged or truncated ({size} bytes): {error}"
        ) from error

    for info in gguf_file.tensors:
        end = info.data_offset + info.n_bytes
        if end > gguf_file.size:
            raise CheckpointError(
                f"GGUF file {path} is damaged or truncated: tensor {info.name!r} needs bytes "
                f"{info.data_offset}..{end} but the file has {gguf_file.size}"
            )
    return gguf_file


# Values per call into gguf.quants: enough to amortize its per-call overhead, few enough that
# its temporaries stay a few megabytes.
_DEQUANTIZE_CHUNK = 1 << 18


def dequantize_data(data: np.ndarray, qtype: Any) -> np.ndarray:
    """``gguf.quants.dequantize(data, qtype)``, bit for bit, about twice as fast.

    gguf decodes block-quantized data 16 rows per call, so a 49152-row embedding takes 3072
    rounds of numpy calls. Decoding is elementwise per block, so feeding gguf's own
    ``dequantize_rows`` bigger row groups gives the same numbers with far less overhead.
    Anything other than block-quantized bytes goes to ``gguf.quants.dequantize`` itself.
    """
    import gguf.quants

    quant: Any = getattr(gguf.quants, qtype.name, None)
    if (
        data.dtype != np.uint8
        or data.size == 0
        or getattr(quant, "qtype", None) != qtype
        or not hasattr(quant, "dequantize_rows")
    ):
        return gguf.quants.dequantize(data, qtype)
    quant.init_grid()
    out_shape = gguf.quants.quant_shape_from_byte_shape(data.shape, qtype)
    rows = data.reshape(-1, data.shape[-1])
    out = np.empty((rows.shape[0], out_shape[-1]), dtype=np.float32)
    step = max(1, _DEQUANTIZE_CHUNK // max(1, out_shape[-1]))
    for start in range(0, rows.shape[0], step):
        out[start : start + step] = quant.dequantize_rows(rows[start : start + step])
    return out.reshape(out_shape)
