"""`from_pretrained`: name -> files -> family config and weights -> processing -> model.

The model is built with uninitialised (untouched) weights, then each checkpoint tensor is
converted and assigned as it is read, so peak memory is about one copy of the weights. The Hugging Face
model is never instantiated.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from anatomist.config import TransformerConfig
from anatomist.families.base import Family, TensorPartsError
from anatomist.families.registry import family_for_config
from anatomist.loading.errors import CheckpointError

if TYPE_CHECKING:
    from anatomist.loading.checkpoints import TrainingCheckpoint
    from anatomist.model.transformer import HookedTransformer

_DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float64": torch.float64,
}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in _DTYPES:
        raise ValueError(f"Unknown dtype {dtype!r}; use one of {', '.join(_DTYPES)}.")
    return _DTYPES[dtype]


def load_pretrained(
    cls: type[HookedTransformer],
    model_name: str | os.PathLike[str],
    fold_ln: bool = True,
    center_writing_weights: bool = True,
    center_unembed: bool = True,
    refactor_factored_attn_matrices: bool = False,
    checkpoint_index: int | None = None,
    checkpoint_value: int | None = None,
    hf_model: Any = None,
    device: str | torch.device | None = None,
    n_devices: int = 1,
    tokenizer: Any = None,
    move_to_device: bool = True,
    fold_value_biases: bool = True,
    default_prepend_bos: bool | None = None,
    default_padding_side: str = "right",
    dtype: str | torch.dtype = "float32",
    first_n_layers: int | None = None,
    n_ctx: int | None = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
    progress: bool = True,
) -> HookedTransformer:
    """Load a checkpoint into a native `HookedTransformer`.

    `model_name` is a local folder (config.json + safetensors/.bin), a .gguf file, a name or
    alias of the model registry, a packaged model ("smollm2-135m-instruct"), or a Hugging Face
    repo id in the local cache (the hub is tried only when online). `hf_model` loads from an
    already instantiated Hugging Face model instead of files. Weight processing defaults to the
    classic steps; `from_pretrained_no_processing` turns them all off. `progress=False` hides the
    progress bar. `checkpoint_index` or `checkpoint_value` picks a training checkpoint (a
    revision for Pythia and stanford-crfm, a ``checkpoints/*_<N>.pth`` file for the classic toy
    models; see `anatomist.loading.checkpoints`).
    """
    if n_devices != 1:
        raise NotImplementedError(
            "Loading across several devices (n_devices > 1) is not supported."
        )
    checkpoint: TrainingCheckpoint | None = None
    if checkpoint_index is not None or checkpoint_value is not None:
        from anatomist.loading.checkpoints import training_checkpoint

        if revision is not None:
            raise ValueError("Pass revision or a training checkpoint, not both.")
        if hf_model is not None:
            raise ValueError("Pass hf_model or a training checkpoint, not both.")
        checkpoint = training_checkpoint(
            model_name, checkpoint_index, checkpoint_value, local_files_only
        )
        revision = checkpoint.revision
    target_dtype = parse_dtype(dtype)
    processing = (
        fold_ln
        or center_writing_weights
        or center_unembed
        or fold_value_biases
        or refactor_factored_attn_matrices
    )
    # Process in float32 and cast afterwards, so folding does not lose half-precision bits.
    load_dtype = torch.float32 if processing and target_dtype.itemsize < 4 else target_dtype

    if checkpoint is not None and checkpoint.weights is not None:
        source = _file_checkpoint_source(checkpoint, tokenizer is None)
    else:
        source = _open_source(model_name, hf_model, revision, local_files_only, tokenizer is None)
    family = family_for_config(source.hf_config)
    refuse_unknown_quantization(source.hf_config, family, source.label)
    cfg = family.build_config(source.hf_config)
    cfg.model_name = source.name
    cfg.dtype = load_dtype
    if n_ctx is not None:
        cfg.n_ctx = n_ctx
    if first_n_layers is not None:
        if not 0 < first_n_layers <= cfg.n_layers:
            raise ValueError(f"first_n_layers must be in 1..{cfg.n_layers}, got {first_n_layers}.")
        cfg.n_layers = first_n_layers
    if default_prepend_bos is not None:
        cfg.default_prepend_bos = default_prepend_bos

    # Skeleton with uninitialised weights: torch.empty reserves memory without touching it, and
    # every weight is replaced as it is read. (Building under `torch.device("meta")` would do the
    # same but costs ~1.2 s importing torch._dynamo for the device context.)
    model = cls(cfg, move_to_device=False, init_weights=False)
    fill_weights(model, family, source.tensors, source.label, progress=progress)
    model.cfg.from_checkpoint = True
    if checkpoint is not None:
        model.cfg.checkpoint_index = checkpoint.index
        model.cfg.checkpoint_value = checkpoint.value
        model.cfg.checkpoint_label_type = checkpoint.label_type
    model.set_tokenizer(
        tokenizer if tokenizer is not None else source.tokenizer, default_padding_side
    )

    model.process_weights_(
        fold_ln=fold_ln,
        center_writing_weights=center_writing_weights,
        center_unembed=center_unembed,
        fold_value_biases=fold_value_biases,
        refactor_factored_attn_matrices=refactor_factored_attn_matrices,
    )
    if load_dtype != target_dtype:
        model.to(target_dtype)
    if move_to_device and device is not None:
        model.to(device)
    return model.eval()


class _Source:
    """Where the weights come from: config dict, a tensor stream, and maybe a tokenizer."""

    def __init__(
        self,
        name: str,
        label: str,
        hf_config: dict[str, Any],
        tensors: Iterable[tuple[str, Tensor]],
        tokenizer: Any,
    ) -> None:
        self.name, self.label, self.hf_config = name, label, hf_config
        self.tensors, self.tokenizer = tensors, tokenizer


def _open_source(
    model_name: str | os.PathLike[str],
    hf_model: Any,
    revision: str | None,
    local_files_only: bool | None,
    want_tokenizer: bool,
) -> _Source:
    name = str(model_name)
    if hf_model is not None:
        hf_config = hf_model.config.to_dict()
        return _Source(
            name,
            f"the given {type(hf_model).__name__}",
            hf_config,
            hf_model.state_dict().items(),
            None,
        )

    from anatomist.loading.resolve import resolve_checkpoint

    resolved = resolve_checkpoint(name, revision=revision, local_files_only=local_files_only)
    if resolved.kind == "gguf":
        from anatomist.loading.gguf import read_gguf

        gguf = read_gguf(resolved.path)
        tokenizer = gguf.tokenizer() if want_tokenizer else None
        return _Source(resolved.name, str(resolved.path), gguf.hf_config, gguf.tensors(), tokenizer)

    from anatomist.loading.safetensors import iter_checkpoint_tensors

    folder = resolved.path
    hf_config = _read_config(folder / "config.json")
    tokenizer = _folder_tokenizer(folder) if want_tokenizer else None
    return _Source(
        resolved.name, str(folder), hf_config, iter_checkpoint_tensors(folder), tokenizer
    )


def _file_checkpoint_source(checkpoint: TrainingCheckpoint, want_tokenizer: bool) -> _Source:
    """A training checkpoint published as a ``.pth`` file beside the model's config.json (the
    classic toy models): read with ``torch.load(weights_only=True)``, like ``.bin`` files."""
    from anatomist.loading.safetensors import _iter_bin

    folder, weights = checkpoint.folder, checkpoint.weights
    assert folder is not None and weights is not None
    hf_config = _read_config(folder / "config.json")
    tokenizer = _folder_tokenizer(folder) if want_tokenizer else None
    return _Source(checkpoint.name, str(weights), hf_config, _iter_bin(weights, None), tokenizer)


def _read_config(config_path: Path) -> dict[str, Any]:
    try:
        config: dict[str, Any] = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise CheckpointError(f"Cannot read {config_path}: {error}") from error
    return config


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _folder_tokenizer(folder: Path) -> Any:
    """The folder's tokenizer, or None when it ships none."""
    if not any((folder / f).exists() for f in _TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))


def refuse_unknown_quantization(hf_config: dict[str, Any], family: Family, label: str) -> None:
    """A `CheckpointError` for a checkpoint whose config.json declares a quantization (its
    ``quantization_config``) that `family` does not dequantize: GPTQ, AWQ, bitsandbytes, FP8
    and the like store packed integers and scales that would otherwise be refused tensor by
    tensor with a misleading message, or read as garbage."""
    quantization = hf_config.get("quantization_config")
    if not quantization:
        return
    method = quantization.get("quant_method") if isinstance(quantization, dict) else None
    if method in family.quant_methods:
        return
    readable = (
        f"; it reads {', '.join(family.quant_methods)} checkpoints" if family.quant_methods else ""
    )
    raise CheckpointError(
        f"{label} is quantized (config.json's quantization_config: quant_method {method!r}), "
        f"which anatomist does not dequantize for the {family.name} family{readable}. Load the "
        "unquantized original, or a float copy: transformers can write one for the methods it "
        "dequantizes (model = AutoModelForCausalLM.from_pretrained(name); model.dequantize(); "
        "model.save_pretrained(folder))."
    )


def fill_weights(
    model: Any,
    family: Family,
    tensors: Iterable[tuple[str, Tensor]],
    label: str,
    progress: bool = True,
) -> None:
    """Convert and assign checkpoint tensors into a model built with uninitialised weights.

    Tensors stored in parts (the family's `TensorGroup`s) are joined first, one whole at a time.
    Biases the checkpoint lacks become zeros; a tied output embedding is copied from the input
    embedding; any other missing weight, a shape mismatch, or an unknown tensor name is a
    `CheckpointError` naming the checkpoint.
    """
    cfg: TransformerConfig = model.cfg  # type: ignore[assignment]
    expected = dict(model.named_parameters())
    loaded: set[str] = set()
    for hf_name, tensor in _assembled(family, _progress(tensors, progress, label), cfg, label):
        try:
            native = family.convert(hf_name, tensor, cfg)
        except KeyError:
            raise CheckpointError(
                f"{label}: unexpected tensor {hf_name!r} for the {family.name} family "
                f"(shape {tuple(tensor.shape)}). The checkpoint may be a different architecture "
                "than its config.json says."
            ) from None
        for key, value in native.items():
            if key not in expected:
                if _beyond_last_layer(key, cfg.n_layers):
                    continue
                raise CheckpointError(
                    f"{label}: tensor {hf_name!r} maps to unknown weight {key!r}."
                )
            if not value.is_floating_point():
                raise CheckpointError(
                    f"{label}: tensor {hf_name!r} is stored as {value.dtype}, not floats: a "
                    f"quantized format the {family.name} family does not dequantize."
                )
            want = expected[key].shape
            if value.shape != want:
                raise CheckpointError(
                    f"{label}: tensor {hf_name!r} has shape {tuple(tensor.shape)}, which gives "
                    f"{key} the shape {tuple(value.shape)}; the config says {tuple(want)}."
                )
            weight = value.to(cfg.dtype)  # `_assign` gives it the layout the model built
            storage = weight.untyped_storage()
            if storage.data_ptr() == tensor.untyped_storage().data_ptr():
                # Still the source's memory (a memory-mapped file or the user's HF model):
                # take our own copy, since weight processing edits weights in place. A tensor
                # read into fresh memory (safetensors files mark theirs) is used as it is, once,
                # when the weight spans all of that memory.
                whole = storage.nbytes() == weight.numel() * weight.element_size()
                if getattr(tensor, "owned_by_loader", False) and whole:
                    tensor.owned_by_loader = False  # type: ignore[attr-defined]
                else:
                    weight = weight.clone()
            _assign(model, key, weight)
            loaded.add(key)

    if "unembed.W_U" not in loaded and "embed.W_E" in loaded:
        # Tied embeddings: the checkpoint stores one matrix. Keep a separate copy for W_U so
        # weight processing (centering, folding) can change one without the other.
        _assign(model, "unembed.W_U", model.embed.W_E.detach().T.clone())
        loaded.add("unembed.W_U")
    missing = []
    for key, param in expected.items():
        if key in loaded:
            continue
        if key.rsplit(".", 1)[-1].lstrip("_").startswith("b"):
            _assign(model, key, torch.zeros(param.shape, dtype=cfg.dtype))
        else:
            missing.append(key)
    if missing:
        shown = ", ".join(missing[:8]) + (" ..." if len(missing) > 8 else "")
        raise CheckpointError(f"{label}: the checkpoint lacks {len(missing)} weights: {shown}.")
    for module in model.modules():
        reset = getattr(module, "reset_buffers", None)
        if callable(reset):
            reset()


def _assembled(
    family: Family, tensors: Iterable[tuple[str, Tensor]], cfg: TransformerConfig, label: str
) -> Iterator[tuple[str, Tensor]]:
    try:
        yield from family.assembled(tensors, cfg)
    except TensorPartsError as error:
        raise CheckpointError(f"{label}: {error}") from None


def _progress(
    tensors: Iterable[tuple[str, Tensor]], enabled: bool, label: str
) -> Iterator[tuple[str, Tensor]]:
    total = len(tensors) if hasattr(tensors, "__len__") else None  # type: ignore[arg-type]
    name = Path(label).name or label
    yield from tqdm(
        tensors,
        total=total,
        desc=f"Loading {name}",
        unit="tensor",
        disable=not enabled,
        leave=False,
    )


def _beyond_last_layer(key: str, n_layers: int) -> bool:
    parts = key.split(".")
    return len(parts) > 1 and parts[0] == "blocks" and int(parts[1]) >= n_layers


def _assign(model: nn.Module, key: str, value: Tensor) -> None:
    """Make `value` the parameter `key`, in the memory layout the model built it with."""
    module_name, _, param_name = key.rpartition(".")
    module = model.get_submodule(module_name)
    built = module._parameters.get(param_name)
    if built is not None and built.shape == value.shape and built.stride() != value.stride():
        value = torch.empty_strided(
            built.shape, built.stride(), dtype=value.dtype, device=value.device
        ).copy_(value)
    module._parameters[param_name] = nn.Parameter(value, requires_grad=True)


def with_tied_tensor(
    tensors: Iterable[tuple[str, Tensor]], source: str, target: str
) -> Iterator[tuple[str, Tensor]]:
    """Pass `tensors` through; if none is named `target`, end with the tensor whose name fully
    matches the regex `source`, again under the name `target`.

    For checkpoints that store a tied weight once (the output embedding of most encoders):
    `fill_weights` then converts the copy like any other tensor, whatever the names map to.
    """
    tied: Tensor | None = None
    seen = False
    for name, tensor in tensors:
        if name == target:
            seen = True
        elif tied is None and re.fullmatch(source, name):
            tied = tensor
        yield name, tensor
    if not seen and tied is not None:
        yield target, tied


# --- the unprocessed loaders of HookedEncoder and HookedEncoderDecoder ---------------------------
def open_family_checkpoint(
    model_name: str | os.PathLike[str],
    family: Family,
    loader: str,
    hint: str,
    hf_model: Any = None,
    revision: str | None = None,
    local_files_only: bool | None = None,
    want_tokenizer: bool = True,
) -> _Source:
    """Open a checkpoint that must belong to `family` (else an error naming what it is, the
    `loader` that was used, and the `hint` of which loader to use instead)."""
    from anatomist.families.registry import UnsupportedArchitectureError

    source = _open_source(model_name, hf_model, revision, local_files_only, want_tokenizer)
    found = family_for_config(source.hf_config)
    if found is not family:
        raise UnsupportedArchitectureError(
            f"{source.label} is a {found.name} model; {loader} loads {family.name} checkpoints "
            f"({', '.join(family.architectures)}). {hint}"
        )
    refuse_unknown_quantization(source.hf_config, family, source.label)
    return source


def fill_and_finish(
    model: Any,
    family: Family,
    source: _Source,
    tensors: Iterable[tuple[str, Tensor]],
    tokenizer: Any,
    device: str | torch.device | None,
    move_to_device: bool,
    progress: bool,
) -> Any:
    """Fill a model built with uninitialised weights, attach the tokenizer, move it, and return
    it in eval mode (no weight processing)."""
    fill_weights(model, family, tensors, source.label, progress=progress)
    model.cfg.from_checkpoint = True
    model.set_tokenizer(tokenizer if tokenizer is not None else source.tokenizer)
    if move_to_device and device is not None:
        model.to(device)
    return model.eval()
