"""Read GGUF checkpoints (llama.cpp's format) into Hugging Face names, shapes and configs.

A GGUF file holds the model's metadata (architecture, sizes, tokenizer) and its tensors, most
of them quantized. :func:`read_gguf` parses the header, checks that the file is complete, and
returns a :class:`GGUFCheckpoint` whose

* ``hf_config`` is a ``config.json``-like dict in Hugging Face's vocabulary,
* ``tensors()`` yields ``(hf_name, float32 tensor)`` pairs one at a time, dequantized and with
  llama.cpp's reordering of the query/key rows undone, so that the result matches the
  ``state_dict`` of the corresponding ``transformers`` model,
* ``tokenizer()`` builds the tokenizer stored in the file.

The container format itself is parsed by `anatomist.loading.gguf_file`; the tensor data stays
memory-mapped and only one dequantized tensor is materialized at a time.

Architectures are described by small tables (:data:`_ARCHITECTURES`): which metadata keys become
which config entries, and which GGUF tensor names become which Hugging Face parameter names.
Adding an architecture whose checkpoints follow the llama layout (qwen2, mistral, ...) is a
matter of adding a table entry. Gemma 3 shows the other knobs: norms stored as ``1 + w``
(``shifted_norms``), Q/K rows left in Hugging Face's order (``permute_qk=False``), and config
entries derived from several keys at once (``finish_config``).
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from anatomist.loading.errors import CheckpointError
from anatomist.loading.gguf_file import (
    ARRAY,
    FLOAT32,
    GGUFFile,
    TensorInfo,
    dequantize_data,
    open_gguf_file,
)

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

__all__ = ["GGUFCheckpoint", "read_gguf"]

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
    # GGUF stems of RMSNorm weights that llama.cpp stores as ``1 + w`` where Hugging Face's
    # state dict holds ``w`` (Gemma's norms); ``tensors()`` subtracts the one.
    shifted_norms: frozenset[str] = frozenset()
    # Derives the hf_config entries no single metadata key holds; runs after the generic ones.
    finish_config: Callable[[GGUFFile, dict[str, Any], str, Path], None] | None = None


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


def _gemma3_config(gguf_file: GGUFFile, config: dict[str, Any], arch: str, path: Path) -> None:
    """Gemma 3's layer types, attention scale and sliding window, as llama.cpp reads the file.

    * Sliding-window layers: ``{arch}.attention.sliding_window_pattern`` when the file has it,
      either a period ``n`` (layer ``i`` is local unless ``(i + 1) % n == 0``; ``0``: all local)
      or one bool per layer (true: local); otherwise llama.cpp's fixed Gemma 3 period of 6 (five
      local layers to one global). A file without ``{arch}.attention.sliding_window`` (or with
      0) has no local layers at all.
    * ``query_pre_attn_scalar``: ``{arch}.attention.scale ** -2`` when the file states the
      scale; otherwise ``head_dim``, except for the 62-layer Gemma 3 27B, whose scalar is
      ``hidden_size / num_attention_heads`` (llama.cpp decides the same way).
    """
    n_layers = int(config["num_hidden_layers"])
    window = config.get("sliding_window")
    if window is not None and (not isinstance(window, int) or window < 0):
        raise CheckpointError(f"GGUF file {path} has an invalid sliding window: {window!r}")
    if not window:
        config["sliding_window"] = None
        local = [False] * n_layers
    else:
        pattern_key = f"{arch}.attention.sliding_window_pattern"
        pattern = gguf_file.metadata.get(pattern_key, 6)
        if pattern_key in gguf_file.metadata and gguf_file.types[pattern_key][0] == ARRAY:
            flags = [bool(flag) for flag in _plain(pattern)]
            if len(flags) != n_layers:
                raise CheckpointError(
                    f"GGUF file {path}: {pattern_key} lists {len(flags)} layers, not {n_layers}"
                )
            local = flags
        elif _is_number(pattern) and isinstance(pattern, int) and pattern >= 0:
            local = [pattern == 0 or (i + 1) % pattern != 0 for i in range(n_layers)]
        else:
            raise CheckpointError(f"GGUF file {path} has an invalid {pattern_key}: {pattern!r}")
    config["layer_types"] = [
        "sliding_attention" if is_local else "full_attention" for is_local in local
    ]

    scale = _metadata(gguf_file, f"{arch}.attention.scale", None, path)
    if scale is not None:
        if not _is_number(scale) or scale <= 0:
            raise CheckpointError(f"GGUF file {path} has an invalid attention scale: {scale!r}")
        scalar = float(scale) ** -2  # an integer in every Gemma 3, up to float32 rounding
        config["query_pre_attn_scalar"] = (
            round(scalar) if abs(scalar - round(scalar)) <= 1e-4 * scalar else scalar
        )
    elif n_layers == 62:  # Gemma 3 27B scales by d_model / n_heads, not by head_dim
        config["query_pre_attn_scalar"] = config["hidden_size"] // config["num_attention_heads"]
    else:
        config["query_pre_attn_scalar"] = config["head_dim"]


_GEMMA3 = _ArchSpec(
    hf_architecture="Gemma3ForCausalLM",
    model_type="gemma3_text",
    config={
        "hidden_size": _Meta("{arch}.embedding_length"),
        "intermediate_size": _Meta("{arch}.feed_forward_length"),
        "num_hidden_layers": _Meta("{arch}.block_count"),
        "num_attention_heads": _Meta("{arch}.attention.head_count"),
        "num_key_value_heads": _Meta("{arch}.attention.head_count_kv", None),
        "head_dim": _Meta("{arch}.attention.key_length", None),
        "rms_norm_eps": _Meta("{arch}.attention.layer_norm_rms_epsilon", 1e-6),
        # Global (full-attention) layers; rope scaling, if any, applies to these only.
        "rope_theta": _Meta("{arch}.rope.freq_base", 1_000_000.0),
        # Local (sliding-window) layers: 10000 in every Gemma 3 (files rarely state it).
        "rope_local_base_freq": _Meta("{arch}.rope.freq_base_swa", 10_000.0),
        "sliding_window": _Meta("{arch}.attention.sliding_window", None),
        "attn_logit_softcapping": _Meta("{arch}.attn_logit_softcapping", None),
        "final_logit_softcapping": _Meta("{arch}.final_logit_softcapping", None),
        "max_position_embeddings": _Meta("{arch}.context_length", 131_072),
        "vocab_size": _Meta("{arch}.vocab_size", None),
        "bos_token_id": _Meta("tokenizer.ggml.bos_token_id", None),
        "eos_token_id": _Meta("tokenizer.ggml.eos_token_id", None),
        "pad_token_id": _Meta("tokenizer.ggml.padding_token_id", None),
    },
    constants={"hidden_activation": "gelu_pytorch_tanh"},
    global_tensors=_LLAMA.global_tensors,
    block_tensors={
        "attn_norm": "input_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "attn_q_norm": "self_attn.q_norm",
        "attn_k_norm": "self_attn.k_norm",
        "post_attention_norm": "post_attention_layernorm",
        "ffn_norm": "pre_feedforward_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
        "post_ffw_norm": "post_feedforward_layernorm",
    },
    block_prefix="model.layers",
    # llama.cpp runs Gemma with NeoX-style rope (rotary halves apart, as in Hugging Face), so
    # its converter leaves Q and K as they are.
    permute_qk=False,
    shifted_norms=frozenset(
        {
            "output_norm",
            "attn_norm",
            "attn_q_norm",
            "attn_k_norm",
            "post_attention_norm",
            "ffn_norm",
            "post_ffw_norm",
        }
    ),
    finish_config=_gemma3_config,
)

_ARCHITECTURES: dict[str, _ArchSpec] = {"llama": _LLAMA, "gemma3": _GEMMA3}


# --------------------------------------------------------------------------------------------
# The checkpoint
# --------------------------------------------------------------------------------------------


class _TensorStream(Iterator[tuple[str, torch.Tensor]]):
    """An iterator that knows how many items it has left (``len``), for progress bars."""

    def __init__(self, items: Iterator[tuple[str, torch.Tensor]], count: int) -> None:
        self._items = items
        self._left = count

    def __next__(self) -> tuple[str, torch.Tensor]:
        item = next(self._items)
        self._left -= 1
        return item

    def __len__(self) -> int:
        return max(self._left, 0)


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
    _file: GGUFFile | None = field(default=None, repr=False, compare=False)

    def _open(self) -> GGUFFile:
        if self._file is None:
            self._file = open_gguf_file(self.path)
        return self._file

    @property
    def tensor_count(self) -> int:
        """How many tensors :meth:`tensors` yields (the file's, less the ignored ones)."""
        gguf_file = self._open()
        spec = _ARCHITECTURES[_architecture(gguf_file, self.path)]
        return sum(info.name not in spec.ignored_tensors for info in gguf_file.tensors)

    def tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield ``(hf_parameter_name, tensor)`` for every weight in the file, one at a time.

        Tensors are dequantized to float32 and have their Hugging Face shapes (``[out, in]``
        for linear weights). The rows of the query and key projections are put back in Hugging
        Face's rotary layout. ``lm_head.weight`` is yielded only when the file stores it (a
        file without it has ``hf_config["tie_word_embeddings"] == True``). Each tensor owns its
        memory; nothing aliases the memory-mapped file.

        The iterator supports ``len()`` (the tensors it has left to yield, initially
        :attr:`tensor_count`), so that progress bars can show a total.

        Raises:
            CheckpointError: a tensor has an unexpected name, an unsupported quantization
                type, the wrong size, or non-finite values.
        """
        return _TensorStream(self._iter_tensors(), self.tensor_count)

    def _iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        gguf_file = self._open()
        spec = _ARCHITECTURES[_architecture(gguf_file, self.path)]
        n_head = int(self.hf_config["num_attention_heads"])
        n_kv_head = int(self.hf_config["num_key_value_heads"])
        for info in gguf_file.tensors:
            if info.name in spec.ignored_tensors:
                continue
            hf_name, role = _hf_tensor_name(spec, info.name, self.path)
            array = _dequantize(gguf_file, info, self.path)
            if spec.permute_qk and role == "attn_q":
                array = _unpermute_rows(array, n_head)
            elif spec.permute_qk and role == "attn_k":
                array = _unpermute_rows(array, n_kv_head)
            elif role in spec.shifted_norms:
                array = array - np.float32(1.0)  # a new array, in float32 as transformers does
            if not array.flags.writeable or not array.flags.c_contiguous:
                array = np.array(array, dtype=np.float32, order="C", copy=True)
            result = torch.from_numpy(array)
            # A sum is non-finite iff some value is (or, harmlessly, it overflows): far cheaper
            # than an elementwise check, which runs only to confirm.
            if not math.isfinite(float(result.sum())) and not bool(torch.isfinite(result).all()):
                raise CheckpointError(
                    f"GGUF file {self.path} is damaged: tensor {info.name!r} contains "
                    "non-finite values"
                )
            yield hf_name, result

    def tokenizer(self) -> PreTrainedTokenizerBase:
        """Build the tokenizer stored in the GGUF file (a fast ``transformers`` tokenizer).

        Uses ``transformers``' own GGUF tokenizer conversion, offline, on the metadata already
        parsed (the file is not read again). The result is the tokenizer
        ``PreTrainedTokenizerFast.from_pretrained(path.parent, gguf_file=path.name)`` builds,
        and encodes as ``AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)``
        does. With a ``transformers`` whose GGUF tokenizer code is laid out otherwise (4.x has
        no ``transformers.integrations.gguf``), it falls back to that ``from_pretrained`` call.

        Raises:
            CheckpointError: the file's tokenizer metadata is missing or inconsistent.
        """
        convert_gguf_tokenizer = _gguf_tokenizer_converter()
        if convert_gguf_tokenizer is None:
            return self._tokenizer_from_pretrained()

        gguf_file = self._open()
        try:
            architecture, tokenizer_dict, tokenizer_config = _tokenizer_inputs(gguf_file)
            backend, extra_kwargs = convert_gguf_tokenizer(architecture, tokenizer_dict)
        except (KeyError, IndexError, TypeError, UnicodeDecodeError) as error:
            raise CheckpointError(
                f"could not build the tokenizer stored in GGUF file {self.path}: {error!r}"
            ) from error
        # The keyword arguments from_pretrained(path.parent, gguf_file=path.name,
        # local_files_only=True) hands the class, in the same order (it ends up in init_kwargs).
        kwargs: dict[str, Any] = {
            "vocab_file": None,
            "name_or_path": str(self.path.parent),
            "is_local": True,
            "local_files_only": True,
            "added_tokens_decoder": {},
            **tokenizer_config,
            **extra_kwargs,
        }
        return _fast_tokenizer(backend, kwargs)

    def _tokenizer_from_pretrained(self) -> PreTrainedTokenizerBase:
        from transformers import PreTrainedTokenizerFast

        try:
            return PreTrainedTokenizerFast.from_pretrained(
                str(self.path.parent),
                gguf_file=self.path.name,
                local_files_only=True,
                trust_remote_code=False,  # nothing beside a GGUF file is ever run
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
    gguf_file = open_gguf_file(path)
    arch = _architecture(gguf_file, path)
    hf_config = _hf_config(gguf_file, _ARCHITECTURES[arch], arch, path)
    if any(t.name == "rope_freqs.weight" for t in gguf_file.tensors):
        warnings.warn(
            f"GGUF file {path} stores rope frequency factors (rope_freqs.weight); they are not "
            "reflected in hf_config['rope_scaling'].",
            stacklevel=2,
        )
    return GGUFCheckpoint(path=path, hf_config=hf_config, _file=gguf_file)


# --------------------------------------------------------------------------------------------
# Opening and checking the file
# --------------------------------------------------------------------------------------------


def _metadata(
    gguf_file: GGUFFile, key: str, default: Any = _REQUIRED, path: Path | None = None
) -> Any:
    """A scalar or string metadata value (float32 values as their shortest decimal); the
    length of an array."""
    if key not in gguf_file.metadata:
        if default is _REQUIRED:
            raise CheckpointError(f"GGUF file {path} lacks the metadata key {key!r}")
        return default
    if key in gguf_file.undecodable:
        raise CheckpointError(
            f"GGUF file {path} is damaged: metadata key {key!r} cannot be read (not UTF-8)"
        )
    value = gguf_file.metadata[key]
    kind = gguf_file.types[key][0]
    if kind == ARRAY:
        return len(value)
    if kind == FLOAT32:
        # Shortest decimal that round-trips in float32: 9.999999747378752e-06 -> 1e-05.
        return float(str(np.float32(value)))
    return value


def _architecture(gguf_file: GGUFFile, path: Path) -> str:
    arch = _metadata(gguf_file, "general.architecture", path=path)
    if arch not in _ARCHITECTURES:
        supported = ", ".join(sorted(_ARCHITECTURES))
        raise CheckpointError(
            f"GGUF file {path} holds architecture {arch!r}, which anatomist cannot read yet; "
            f"supported GGUF architectures: {supported}"
        )
    return str(arch)


# --------------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------------

# Special tokens -> the ``tokenizer.ggml.*`` key of their id (as transformers reads them).
_SPECIAL_TOKEN_IDS = {
    "bos_token": "bos_token_id",
    "eos_token": "eos_token_id",
    "unk_token": "unknown_token_id",
    "pad_token": "padding_token_id",
}


def _gguf_tokenizer_converter() -> Any:
    """transformers' ``convert_gguf_tokenizer``, where its GGUF tokenizer code has the layout
    :func:`_tokenizer_inputs` mirrors (5.x); None otherwise."""
    try:
        from transformers.integrations.gguf import (  # noqa: F401 (checks the layout)
            GGUF_TOKENIZER_MAPPING,
            convert_gguf_tokenizer,
            get_gguf_tokenizer,
        )
    except ImportError:
        return None
    return convert_gguf_tokenizer


def _plain(value: Any) -> Any:
    """numpy arrays as lists of Python numbers, as transformers' own GGUF reader gives them."""
    return value.tolist() if isinstance(value, np.ndarray) else value


def _tokenizer_inputs(gguf_file: GGUFFile) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """``(architecture, tokenizer_dict, tokenizer_config)`` from the parsed metadata, as
    ``transformers.integrations.gguf.get_gguf_tokenizer(path)`` returns them from the file
    (the tests hold the two equal)."""
    from transformers.integrations.gguf import GGUF_TOKENIZER_MAPPING

    metadata = gguf_file.metadata
    for key in gguf_file.undecodable:
        if key.startswith("tokenizer."):
            raise CheckpointError(
                f"GGUF file {gguf_file.path} is damaged: metadata key {key!r} holds a string "
                "that is not UTF-8"
            )
    grouped = {
        group: {
            name: _plain(metadata[f"tokenizer.{key}"])
            for key, name in renames.items()
            if f"tokenizer.{key}" in metadata
        }
        for group, renames in GGUF_TOKENIZER_MAPPING.items()
    }
    tokenizer, tokenizer_config = grouped["tokenizer"], grouped["tokenizer_config"]
    tokenizer_type = tokenizer.get("tokenizer_type")
    if tokenizer_type == "llama":
        # No flag in older files, and llama.cpp adds BOS to such sentencepiece vocabularies.
        tokenizer_config.setdefault("add_bos_token", True)
    elif tokenizer_type == "gemma4":
        tokenizer_config["add_bos_token"] = False  # its chat template writes <bos> itself
    for name, key in _SPECIAL_TOKEN_IDS.items():
        token_id = metadata.get(f"tokenizer.ggml.{key}")
        tokenizer_config[name] = tokenizer["tokens"][token_id] if token_id is not None else None
    return metadata["general.architecture"], tokenizer, tokenizer_config


class _Handover:
    """Hands a freshly built backend tokenizer to ``PreTrainedTokenizerFast(tokenizer_object=)``
    without the defensive ``copy.deepcopy`` it makes (~0.2 s for a 50k vocabulary): the
    backend is ours alone, so its "copy" can be itself."""

    def __init__(self, backend: Any) -> None:
        self.backend = backend

    def __deepcopy__(self, memo: dict[int, Any]) -> Any:
        return self.backend


def _fast_tokenizer(backend: Any, kwargs: dict[str, Any]) -> PreTrainedTokenizerBase:
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    try:
        built = PreTrainedTokenizerFast(tokenizer_object=_Handover(backend), **kwargs)
        if isinstance(built.backend_tokenizer, Tokenizer):
            return built
    except AttributeError:
        pass  # a transformers that does not deep-copy tokenizer_object: let it copy
    return PreTrainedTokenizerFast(tokenizer_object=backend, **kwargs)


# --------------------------------------------------------------------------------------------
# Metadata -> hf_config
# --------------------------------------------------------------------------------------------


def _rope_scaling(gguf_file: GGUFFile, arch: str, path: Path) -> dict[str, Any] | None:
    """Hugging Face's ``rope_scaling`` from ``{arch}.rope.scaling.*``, or None if unscaled."""
    kind = _metadata(gguf_file, f"{arch}.rope.scaling.type", None, path)
    factor = _metadata(gguf_file, f"{arch}.rope.scaling.factor", None, path)
    if kind is None:
        legacy = _metadata(gguf_file, f"{arch}.rope.scale_linear", None, path)
        if legacy is None or legacy == 1.0:
            return None
        kind, factor = "linear", legacy
    if kind == "none" or factor is None:
        return None
    original = _metadata(gguf_file, f"{arch}.rope.scaling.original_context_length", None, path)
    if (
        not isinstance(kind, str)
        or not _is_number(factor)
        or not (original is None or _is_number(original))
    ):
        raise CheckpointError(
            f"GGUF file {path} has invalid rope scaling metadata: type {kind!r}, factor "
            f"{factor!r}, original context length {original!r}"
        )
    scaling: dict[str, Any] = {"rope_type": kind, "factor": float(factor)}
    if original is not None:
        scaling["original_max_position_embeddings"] = int(original)
    return scaling


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _hf_config(gguf_file: GGUFFile, spec: _ArchSpec, arch: str, path: Path) -> dict[str, Any]:
    config: dict[str, Any] = {
        "architectures": [spec.hf_architecture],
        "model_type": spec.model_type,
    }
    for hf_key, meta in spec.config.items():
        config[hf_key] = _metadata(gguf_file, meta.key.format(arch=arch), meta.default, path)
    config.update(spec.constants)

    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"):
        _check_positive_int(config, key, path)
    for key in ("num_key_value_heads", "head_dim"):
        if config[key] is not None:
            _check_positive_int(config, key, path)
    if config["num_key_value_heads"] is None:
        config["num_key_value_heads"] = config["num_attention_heads"]
    if config["head_dim"] is None:
        config["head_dim"] = config["hidden_size"] // config["num_attention_heads"]
    config["rope_scaling"] = _rope_scaling(gguf_file, arch, path)

    names = {t.name: t for t in gguf_file.tensors}
    if config["vocab_size"] is None:
        tokens = gguf_file.metadata.get("tokenizer.ggml.tokens")
        if tokens is not None:
            config["vocab_size"] = len(tokens)
        elif "token_embd.weight" in names:
            config["vocab_size"] = int(names["token_embd.weight"].dims[-1])
        else:
            raise CheckpointError(f"GGUF file {path} records no vocabulary size")
    config["tie_word_embeddings"] = "output.weight" not in names
    config["attention_bias"] = "blk.0.attn_q.bias" in names
    config["mlp_bias"] = "blk.0.ffn_up.bias" in names

    if config["num_attention_heads"] % config["num_key_value_heads"]:
        raise CheckpointError(
            f"GGUF file {path}: {config['num_attention_heads']} attention heads are not a "
            f"multiple of {config['num_key_value_heads']} key/value heads"
        )
    if spec.finish_config is not None:
        spec.finish_config(gguf_file, config, arch, path)
    return config


def _check_positive_int(config: dict[str, Any], key: str, path: Path) -> None:
    value = config[key]
    if not _is_number(value) or not isinstance(value, int) or value <= 0:
        raise CheckpointError(f"GGUF file {path} has an invalid {key}: {value!r}")


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


def _dequantize(gguf_file: GGUFFile, info: TensorInfo, path: Path) -> np.ndarray:
    """The tensor as float32 in numpy (row-major, GGUF dims reversed = HF shape)."""
    from gguf.constants import GGMLQuantizationType

    qtype = GGMLQuantizationType(info.ggml_type)
    shape = tuple(reversed(info.dims))
    data = gguf_file.tensor_data(info)
    try:
        array = dequantize_data(data, qtype)
    except NotImplementedError as error:
        if data.dtype == np.uint8:  # a block-quantized type gguf cannot decode
            raise CheckpointError(
                f"GGUF file {path}: tensor {info.name!r} uses quantization type "
                f"{qtype.name}, which the installed gguf package cannot dequantize"
            ) from error
        array = data  # plain numeric types (F64, I8, ...) are already typed
    try:
        return np.asarray(array, dtype=np.float32).reshape(shape)
    except ValueError as error:
        raise CheckpointError(
            f"GGUF file {path} is damaged: tensor {info.name!r} has {np.size(array)} values, "
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
