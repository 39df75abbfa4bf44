"""Read GGUF checkpoints (llama.cpp's format) into Hugging Face names, shapes and configs.

A GGUF file holds the model's metadata (architecture, sizes, tokenizer) and its tensors, most
of them quantized. :func:`read_gguf` parses the header, checks that the file is complete, and
returns a :class:`GGUFCheckpoint` whose

* ``hf_config`` is a ``config.json``-like dict in Hugging Face's vocabulary,
* ``tensors()`` yields ``(hf_name, float32 tensor)`` pairs one at a time, dequantized and with
  llama.cpp's reordering of the query/key rows undone, so that the result matches the
  ``state_dict`` of the corresponding ``transformers`` model,
* ``tokenizer()`` builds the tokenizer stored in the file.

The file is memory-mapped; only one dequantized tensor is materialized at a time.

Architectures are described by small tables (:data:`_ARCHITECTURES`): which metadata keys become
which config entries, and which GGUF tensor names become which Hugging Face parameter names.
Adding an architecture whose checkpoints follow the llama layout (qwen2, mistral, ...) is a
matter of adding a table entry.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from anatomist.loading.errors import CheckpointError

if TYPE_CHECKING:
    from gguf import GGUFReader, ReaderField, ReaderTensor
    from transformers import PreTrainedTokenizerBase

__all__ = ["GGUFCheckpoint", "read_gguf"]

_GGUF_MAGIC = b"GGUF"
_REQUIRED = object()  # marks a metadata key without a default


# --------------------------------------------------------------------------------------------
# Architecture tables
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Meta:
    """One config entry read from GGUF metadata.

    ``key`` may contain ``{arch}``, replaced by the file's ``general.architecture``. A missing
    key takes ``default``; with no default the file is rejected.
    """

    key: str
    default: Any = _REQUIRED


@dataclass(frozen=True)
class _ArchSpec:
    """How one GGUF architecture maps onto a Hugging Face model class."""

    hf_architecture: str
    model_type: str
    # hf_config key -> where its value lives in the GGUF metadata.
    config: Mapping[str, _Meta]
    # hf_config entries that GGUF does not record; they hold for every file of this architecture.
    constants: Mapping[str, Any]
    # Tensors outside the blocks: GGUF name stem -> HF module path.
    global_tensors: Mapping[str, str]
    # Tensors inside block i (``blk.{i}.<stem>``): GGUF stem -> HF module path under the layer.
    block_tensors: Mapping[str, str]
    block_prefix: str
    # Whether llama.cpp's converter permuted the rows of Q and K (see ``_unpermute_rows``).
    permute_qk: bool
    # GGUF tensors with no HF parameter counterpart; skipped by ``tensors()``.
    ignored_tensors: frozenset[str] = frozenset()


_LLAMA = _ArchSpec(
    hf_architecture="LlamaForCausalLM",
    model_type="llama",
    config={
        "hidden_size": _Meta("{arch}.embedding_length"),
        "intermediate_size": _Meta("{arch}.feed_forward_length"),
        "num_hidden_layers": _Meta("{arch}.block_count"),
        "num_attention_heads": _Meta("{arch}.attention.head_count"),
        "num_key_value_heads": _Meta("{arch}.attention.head_count_kv", None),
        "head_dim": _Meta("{arch}.attention.key_length", None),
        "rms_norm_eps": _Meta("{arch}.attention.layer_norm_rms_epsilon", 1e-5),
        "rope_theta": _Meta("{arch}.rope.freq_base", 10000.0),
        "max_position_embeddings": _Meta("{arch}.context_length", 2048),
        "vocab_size": _Meta("{arch}.vocab_size", None),
        "bos_token_id": _Meta("tokenizer.ggml.bos_token_id", None),
        "eos_token_id": _Meta("tokenizer.ggml.eos_token_id", None),
        "pad_token_id": _Meta("tokenizer.ggml.padding_token_id", None),
    },
    constants={"hidden_act": "silu"},
    global_tensors={
        "token_embd": "model.embed_tokens",
        "output_norm": "model.norm",
        "output": "lm_head",
    },
    block_tensors={
        "attn_norm": "input_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    },
    block_prefix="model.layers",
    permute_qk=True,
    # Llama 3.1-style files store their rope frequency factors as a tensor; HF derives them
    # from config.rope_scaling instead. ``read_gguf`` warns when it sees one.
    ignored_tensors=frozenset({"rope_freqs.weight"}),
)

_ARCHITECTURES: dict[str, _ArchSpec] = {"llama": _LLAMA}


# --------------------------------------------------------------------------------------------
# The checkpoint
# --------------------------------------------------------------------------------------------


@dataclass
class GGUFCheckpoint:
    """A GGUF file, opened and checked, with its config in Hugging Face terms.

    Attributes:
        path: The GGUF file.
        hf_config: A ``config.json``-like dict built from the GGUF metadata (``architectures``,
            ``model_type``, sizes, ``rope_theta``, ``rope_scaling``, ``tie_word_embeddings``,
            special token ids, ...).
    """

    path: Path
    hf_config: dict[str, Any]
    _reader: GGUFReader | None = field(default=None, repr=False, compare=False)

    def _open(self) -> GGUFReader:
        if self._reader is None:
            self._reader = _open_reader(self.path)
        return self._reader

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(hf_parameter_name, tensor)`` for every weight in the file, one at a time.

        Tensors are dequantized to float32 and have their Hugging Face shapes (``[out, in]``
        for linear weights). The rows of the query and key projections are put back in Hugging
        Face's rotary layout. ``lm_head.weight`` is yielded only when the file stores it (a
        file without it has ``hf_config["tie_word_embeddings"] == True``). Each tensor owns its
        memory; nothing aliases the memory-mapped file.

        Raises:
            CheckpointError: a tensor has an unexpected name, an unsupported quantization
                type, the wrong size, or non-finite values.
        """
        reader = self._open()
        arch = _architecture(reader, self.path)
        spec = _ARCHITECTURES[arch]
        n_head = int(self.hf_config["num_attention_heads"])
        n_kv_head = int(self.hf_config["num_key_value_heads"])
        for tensor in reader.tensors:
            if tensor.name in spec.ignored_tensors:
                continue
            hf_name, role = _hf_tensor_name(spec, tensor.name, self.path)
            array = _dequantize(tensor, self.path)
            if spec.permute_qk and role == "attn_q":
                array = _unpermute_rows(array, n_head)
            elif spec.permute_qk and role == "attn_k":
                array = _unpermute_rows(array, n_kv_head)
            if not array.flags.writeable or not array.flags.c_contiguous:
                array = np.array(array, dtype=np.float32, order="C", copy=True)
            result = torch.from_numpy(array)
            # A sum is non-finite iff some value is (or, harmlessly, it overflows): far cheaper
            # than an elementwise check, which runs only to confirm.
            if not math.isfinite(float(result.sum())) and not bool(torch.isfinite(result).all()):
                raise CheckpointError(
                    f"GGUF file {self.path} is damaged: tensor {tensor.name!r} contains "
                    "non-finite values"
                )
            yield hf_name, result

    def tokenizer(self) -> PreTrainedTokenizerBase:
        """Build the tokenizer stored in the GGUF file (a fast ``transformers`` tokenizer).

        Uses ``transformers``' own GGUF tokenizer conversion, offline. The result is the same
        tokenizer ``AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)`` returns,
        built without first re-deriving the model config (about ten times faster).
        """
        from transformers import PreTrainedTokenizerFast

        try:
            return PreTrainedTokenizerFast.from_pretrained(
                str(self.path.parent), gguf_file=self.path.name, local_files_only=True
            )
        except (KeyError, IndexError, UnicodeDecodeError) as error:
            raise CheckpointError(
                f"could not build the tokenizer stored in GGUF file {self.path}: {error!r}"
            ) from error


def read_gguf(path: str | os.PathLike[str]) -> GGUFCheckpoint:
    """Open a GGUF file, check it, and describe it in Hugging Face terms.

    Only the header is parsed here; tensor data stays memory-mapped until
    :meth:`GGUFCheckpoint.tensors` is iterated.

    Raises:
        CheckpointError: the file is missing, is not a GGUF file, is damaged or truncated, or
            holds an architecture anatomist cannot map (the message names the supported ones).
    """
    path = Path(path)
    reader = _open_reader(path)
    arch = _architecture(reader, path)
    hf_config = _hf_config(reader, _ARCHITECTURES[arch], arch, path)
    if any(t.name == "rope_freqs.weight" for t in reader.tensors):
        warnings.warn(
            f"GGUF file {path} stores rope frequency factors (rope_freqs.weight); they are not "
            "reflected in hf_config['rope_scaling'].",
            stacklevel=2,
        )
    return GGUFCheckpoint(path=path, hf_config=hf_config, _reader=reader)


# --------------------------------------------------------------------------------------------
# Opening and checking the file
# --------------------------------------------------------------------------------------------


def _open_reader(path: Path) -> GGUFReader:
    """Memory-map ``path`` with gguf's reader, turning every failure into a CheckpointError."""
    from gguf import GGUFReader

    try:
        with open(path, "rb") as handle:
            magic = handle.read(len(_GGUF_MAGIC))
            size = os.fstat(handle.fileno()).st_size
    except FileNotFoundError as error:
        raise CheckpointError(f"GGUF file not found: {path}") from error
    except IsADirectoryError as error:
        raise CheckpointError(f"expected a GGUF file but {path} is a directory") from error
    except OSError as error:
        raise CheckpointError(f"cannot read GGUF file {path}: {error}") from error

    if magic != _GGUF_MAGIC:
        if len(magic) < len(_GGUF_MAGIC):
            raise CheckpointError(
                f"GGUF file {path} is damaged or truncated: it is only {size} bytes long"
            )
        raise CheckpointError(
            f"{path} is not a GGUF file: it starts with {magic!r}, not {_GGUF_MAGIC!r}"
        )

    try:
        reader = GGUFReader(path, "r")
    except Exception as error:  # gguf raises ValueError, IndexError, struct errors, ...
        raise CheckpointError(
            f"GGUF file {path} is damaged or truncated ({size} bytes); reading its header "
            f"failed with {type(error).__name__}: {error}"
        ) from error

    for tensor in reader.tensors:
        end = int(tensor.data_offset) + int(tensor.n_bytes)
        if int(tensor.data_offset) < 0 or end > size:
            raise CheckpointError(
                f"GGUF file {path} is damaged or truncated: tensor {tensor.name!r} needs bytes "
                f"{tensor.data_offset}..{end} but the file has {size}"
            )
    return reader


def _field_value(entry: ReaderField) -> Any:
    """The value of a scalar or string metadata field; the length of an array field."""
    from gguf import GGUFValueType

    if not entry.types:
        return None
    kind = entry.types[0]
    if kind == GGUFValueType.ARRAY:
        return len(entry.data)
    part = entry.parts[entry.data[0]]
    if kind == GGUFValueType.STRING:
        return bytes(part).decode("utf-8")
    value = part[0].item() if hasattr(part[0], "item") else part[0]
    if kind == GGUFValueType.FLOAT32:
        # Shortest decimal that round-trips in float32: 9.999999747378752e-06 -> 1e-05.
        return float(str(np.float32(value)))
    if kind == GGUFValueType.BOOL:
        return bool(value)
    return value


def _metadata(
    reader: GGUFReader, key: str, default: Any = _REQUIRED, path: Path | None = None
) -> Any:
    entry = reader.fields.get(key)
    if entry is None:
        if default is _REQUIRED:
            raise CheckpointError(f"GGUF file {path} lacks the metadata key {key!r}")
        return default
    try:
        return _field_value(entry)
    except (IndexError, UnicodeDecodeError) as error:
        raise CheckpointError(
            f"GGUF file {path} is damaged: metadata key {key!r} cannot be read ({error})"
        ) from error


def _architecture(reader: GGUFReader, path: Path) -> str:
    arch = _metadata(reader, "general.architecture", path=path)
    if arch not in _ARCHITECTURES:
        supported = ", ".join(sorted(_ARCHITECTURES))
        raise CheckpointError(
            f"GGUF file {path} holds architecture {arch!r}, which anatomist cannot read yet; "
            f"supported GGUF architectures: {supported}"
        )
    return str(arch)


# --------------------------------------------------------------------------------------------
# Metadata -> hf_config
# --------------------------------------------------------------------------------------------


def _rope_scaling(reader: GGUFReader, arch: str, path: Path) -> dict[str, Any] | None:
    """Hugging Face's ``rope_scaling`` from ``{arch}.rope.scaling.*``, or None if unscaled."""
    kind = _metadata(reader, f"{arch}.rope.scaling.type", None, path)
    factor = _metadata(reader, f"{arch}.rope.scaling.factor", None, path)
    if kind is None:
        legacy = _metadata(reader, f"{arch}.rope.scale_linear", None, path)
        if legacy is None or legacy == 1.0:
            return None
        kind, factor = "linear", legacy
    if kind == "none" or factor is None:
        return None
    scaling: dict[str, Any] = {"rope_type": kind, "factor": float(factor)}
    original = _metadata(reader, f"{arch}.rope.scaling.original_context_length", None, path)
    if original is not None:
        scaling["original_max_position_embeddings"] = int(original)
    return scaling


def _hf_config(reader: GGUFReader, spec: _ArchSpec, arch: str, path: Path) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architectures": [spec.hf_architecture],
        "model_type": spec.model_type,
    }
    for hf_key, meta in spec.config.items():
        config[hf_key] = _metadata(reader, meta.key.format(arch=arch), meta.default, path)
    config.update(spec.constants)

    if config["num_key_value_heads"] is None:
        config["num_key_value_heads"] = config["num_attention_heads"]
    if config["head_dim"] is None:
        config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    config["rope_scaling"] = _rope_scaling(reader, arch, path)

    names = {t.name: t for t in reader.tensors}
    if config["vocab_size"] is None:
        tokens = reader.fields.get("tokenizer.ggml.tokens")
        if tokens is not None:
            config["vocab_size"] = len(tokens.data)
        elif "token_embd.weight" in names:
            config["vocab_size"] = int(names["token_embd.weight"].shape[-1])
        else:
            raise CheckpointError(f"GGUF file {path} records no vocabulary size")
    config["tie_word_embeddings"] = "output.weight" not in names
    config["attention_bias"] = "blk.0.attn_q.bias" in names
    config["mlp_bias"] = "blk.0.ffn_up.bias" in names

    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        if not isinstance(config[key], int) or config[key] <= 0:
            raise CheckpointError(f"GGUF file {path} has an invalid {key}: {config[key]!r}")
    if config["num_attention_heads"] % config["num_key_value_heads"]:
        raise CheckpointError(
            f"GGUF file {path}: {config['num_attention_heads']} attention heads are not a "
            f"multiple of {config['num_key_value_heads']} key/value heads"
        )
    return config


# --------------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------------


def _hf_tensor_name(spec: _ArchSpec, name: str, path: Path) -> tuple[str, str]:
    """``(hf_name, gguf_stem)`` for a GGUF tensor name such as ``blk.3.attn_q.weight``."""
    stem, _, suffix = name.rpartition(".")
    if suffix not in ("weight", "bias") or not stem:
        raise CheckpointError(f"GGUF file {path} has an unexpected tensor {name!r}")
    if stem in spec.global_tensors:
        return f"{spec.global_tensors[stem]}.{suffix}", stem
    parts = stem.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit():
        module = spec.block_tensors.get(parts[2])
        if module is not None:
            return f"{spec.block_prefix}.{int(parts[1])}.{module}.{suffix}", parts[2]
    raise CheckpointError(
        f"GGUF file {path} has a tensor {name!r} that anatomist does not know how to map"
    )


def _dequantize(tensor: ReaderTensor, path: Path) -> np.ndarray:
    """The tensor as float32 in numpy (row-major, GGUF dims reversed = HF shape)."""
    from gguf.quants import dequantize

    shape = tuple(int(d) for d in reversed(tensor.shape.tolist()))
    try:
        array = dequantize(tensor.data, tensor.tensor_type)
    except NotImplementedError as error:
        if tensor.data.dtype == np.uint8:  # a block-quantized type gguf cannot decode
            raise CheckpointError(
                f"GGUF file {path}: tensor {tensor.name!r} uses quantization type "
                f"{tensor.tensor_type.name}, which the installed gguf package cannot dequantize"
            ) from error
        array = tensor.data  # plain numeric types (F64, I8, ...) are already typed
    try:
        return np.asarray(array, dtype=np.float32).reshape(shape)
    except ValueError as error:
        raise CheckpointError(
            f"GGUF file {path} is damaged: tensor {tensor.name!r} has {np.size(array)} values, "
            f"not the {int(np.prod(shape))} its shape {list(shape)} needs"
        ) from error


def _unpermute_rows(weight: np.ndarray, n_head: int) -> np.ndarray:
    """Undo the row permutation llama.cpp applies to Q and K weights (and biases).

    llama.cpp's converter interleaves the two rotary halves of every head (``x[:d/2]``,
    ``x[d/2:]`` -> pairs) to suit its rope kernel; Hugging Face keeps the halves apart.
    """
    rows = weight.shape[0]
    if rows % (2 * n_head):
        raise CheckpointError(
            f"cannot undo the rotary permutation: {rows} rows do not split into {n_head} heads"
        )
    rest = weight.shape[1:]
    return weight.reshape(n_head, rows // n_head // 2, 2, *rest).swapaxes(1, 2).reshape(rows, *rest)
