"""`from_pretrained`: name -> files -> family config and weights -> processing -> model.

The model is built with uninitialised (untouched) weights, then each checkpoint tensor is
converted and assigned as it is read, so peak memory is about one copy of the weights. The Hugging Face
model is never instantiated.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from anatomist.config import ConfigError, TransformerConfig
from anatomist.families.base import Family, StoredShapeError, TensorPartsError
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
    device_map: str | Mapping[str, int | str | torch.device] | None = None,
    max_memory: Mapping[int | str, int | str] | None = None,
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

    One model over several devices (`anatomist.model.devices`, docs/scale.md): `device_map`
    is "auto", "balanced" or "sequential" (planned by accelerate from `max_memory`, e.g.
    ``{0: "20GiB", 1: "20GiB", "cpu": "60GiB"}``; default: what the devices have free) or a
    dict of module-name prefixes to devices; `n_devices=k` is the classic even split over
    ``cuda:0 .. cuda:k-1`` (from `device` on). Each weight is read straight onto its device.
    """
    _check_split_args(device, n_devices, device_map, max_memory)
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
    # Loaded in this dtype: weight processing turns one group (a block) of a half-precision
    # model at a time into float32 and back (loading/processing.py), so folding loses no bits.
    target_dtype = parse_dtype(dtype)

    if checkpoint is not None and checkpoint.weights is not None:
        source = _file_checkpoint_source(checkpoint, tokenizer is None)
    else:
        source = _open_source(model_name, hf_model, revision, local_files_only, tokenizer is None)
    family = family_for_config(source.hf_config)
    refuse_unknown_quantization(source.hf_config, family, source.label)
    cfg = config_from(family.build_config, source)
    cfg.model_name = source.name
    cfg.dtype = target_dtype
    if n_ctx is not None:
        if isinstance(n_ctx, bool) or not isinstance(n_ctx, int) or n_ctx < 1:
            raise ConfigError(f"n_ctx must be a positive integer, got {n_ctx!r}.", "n_ctx", n_ctx)
        cfg.n_ctx = n_ctx
    checkpoint_layers = None
    if first_n_layers is not None:
        if not 0 < first_n_layers <= cfg.n_layers:
            raise ValueError(f"first_n_layers must be in 1..{cfg.n_layers}, got {first_n_layers}.")
        checkpoint_layers, cfg.n_layers = cfg.n_layers, first_n_layers
    if default_prepend_bos is not None:
        cfg.default_prepend_bos = default_prepend_bos

    # Skeleton with uninitialised weights: torch.empty reserves memory without touching it, and
    # every weight is replaced as it is read. (Building under `torch.device("meta")` would do the
    # same but costs ~1.2 s importing torch._dynamo for the device context.)
    # The tokenizer is the source's or the caller's (set below): the skeleton must not load
    # cfg.tokenizer_name itself, as HookedTransformer(cfg) does.
    tokenizer_name, cfg.tokenizer_name = cfg.tokenizer_name, None
    model = cls(cfg, move_to_device=False, init_weights=False)
    cfg.tokenizer_name = tokenizer_name
    placed = None
    if device_map is not None or n_devices != 1:
        from anatomist.model.devices import check_splittable, plan_devices

        check_splittable(cls)
        placed = plan_devices(model, device_map, max_memory, n_devices, device, target_dtype)
    fill_weights(model, family, source.tensors, source.label, progress, checkpoint_layers, placed)
    if placed is not None:
        from anatomist.model.devices import place

        place(model, placed)  # the buffers, and where each block runs
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
    if move_to_device and device is not None and placed is None:
        model.to(device)
    return model.eval()


def _check_split_args(device: Any, n_devices: Any, device_map: Any, max_memory: Any) -> None:
    from anatomist.model.devices import check_n_devices

    check_n_devices(n_devices)
    if device_map is not None and n_devices != 1:
        raise ValueError(
            "Pass device_map or n_devices, not both: n_devices=k is the classic even split, "
            "device_map any other placement."
        )
    if device_map is not None and device is not None:
        raise ValueError(
            "Pass device or device_map, not both: a device_map places every part itself."
        )
    if max_memory is not None and not isinstance(device_map, str):
        raise ValueError(
            "max_memory is read by the planner: pass it with device_map='auto', 'balanced' "
            "or 'sequential'."
        )


class _Source:
    """Where the weights come from: config dict, a tensor stream, and maybe a tokenizer.
    `config_label` says where the config came from (a config.json path), for errors."""

    def __init__(
        self,
        name: str,
        label: str,
        hf_config: dict[str, Any],
        tensors: Iterable[tuple[str, Tensor]],
        tokenizer: Any,
        config_label: str | None = None,
    ) -> None:
        self.name, self.label, self.hf_config = name, label, hf_config
        self.tensors, self.tokenizer = tensors, tokenizer
        self.config_label = config_label or f"the config of {label}"


def config_from(
    build: Callable[[dict[str, Any]], TransformerConfig], source: _Source
) -> TransformerConfig:
    """`build(source.hf_config)` (a family's config mapping), with a config that cannot be read
    as one reported as a `ConfigError` naming where it came from and the field: a missing key
    (a bare KeyError otherwise), a value of the wrong type, a nonsense size."""
    where = source.config_label
    try:
        cfg = build(source.hf_config)
    except ConfigError as error:
        field = _config_key(source.hf_config, error)
        raise ConfigError(f"{where}{field}: {error}", error.field, error.value, where) from None
    except KeyError as error:
        key = error.args[0] if error.args else "?"
        raise ConfigError(
            f"{where} lacks the key {key!r}, which this architecture's config needs. The file "
            "is incomplete or was written for another architecture; use the config.json that "
            "came with the weights.",
            str(key),
            None,
            where,
        ) from None
    except (TypeError, ZeroDivisionError, AttributeError) as error:
        raise ConfigError(
            f"{where} has a value of the wrong type or size ({type(error).__name__}: {error}). "
            "Check its numbers (sizes and counts are positive integers) against the model's "
            "original config.json.",
            None,
            None,
            where,
        ) from None
    if cfg.d_vocab < 1:  # -1 ("set later") only makes sense for a config built by hand
        raise ConfigError(
            f"{where} gives no vocabulary size (d_vocab {cfg.d_vocab}); a checkpoint's config "
            "must (vocab_size).",
            "d_vocab",
            cfg.d_vocab,
            where,
        )
    return cfg


def _config_key(hf_config: dict[str, Any], error: ConfigError) -> str:
    """ " (field F, config.json's K)": the field a `ConfigError` names, and the config.json key
    that holds its value when exactly one does (families rename keys: n_head -> n_heads)."""
    if error.field is None:
        return ""
    value = error.value
    keys = [
        key
        for key, given in hf_config.items()
        if type(given) is type(value) and given == value and not isinstance(value, bool | None)
    ]
    key = f", config.json's {keys[0]}" if len(keys) == 1 and keys[0] != error.field else ""
    return f" (field {error.field}{key})"


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
    # The architecture first: a folder that is custom code (config.json's auto_map) or an
    # architecture we do not know is refused before anything else of it is read, above all its
    # tokenizer, which transformers would otherwise offer to run the folder's Python for.
    family_for_config(hf_config)
    tokenizer = _folder_tokenizer(folder, hf_config) if want_tokenizer else None
    return _Source(
        resolved.name,
        str(folder),
        hf_config,
        iter_checkpoint_tensors(folder),
        tokenizer,
        str(folder / "config.json"),
    )


def _file_checkpoint_source(checkpoint: TrainingCheckpoint, want_tokenizer: bool) -> _Source:
    """A training checkpoint published as a file beside the model's config.json: a ``.pth``
    (the classic toy models), read with ``torch.load(weights_only=True)`` like ``.bin`` files,
    or a ``.safetensors`` (`anatomist.train`'s checkpoints)."""
    from anatomist.loading.safetensors import _iter_bin, _iter_safetensors

    folder, weights = checkpoint.folder, checkpoint.weights
    assert folder is not None and weights is not None
    read = _iter_safetensors if weights.suffix == ".safetensors" else _iter_bin
    hf_config = _read_config(folder / "config.json")
    family_for_config(hf_config)  # before the tokenizer, as in _open_source
    tokenizer = _folder_tokenizer(folder, hf_config) if want_tokenizer else None
    return _Source(
        checkpoint.name,
        str(weights),
        hf_config,
        read(weights, None),
        tokenizer,
        str(folder / "config.json"),
    )


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"Cannot read {path}: {error}") from error


def _read_config(config_path: Path) -> dict[str, Any]:
    config = _read_json(config_path)
    if not isinstance(config, dict):
        raise ConfigError(
            f"{config_path} holds a JSON {type(config).__name__}, not an object of settings "
            "(a Hugging Face config.json maps names such as model_type to values). Use the "
            "config.json that came with the weights.",
            None,
            config,
            str(config_path),
        )
    return config


_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")


def _folder_tokenizer(folder: Path, hf_config: dict[str, Any]) -> Any:
    """The folder's tokenizer, or None when it ships none. Never runs code from the folder: a
    tokenizer that only custom code builds is refused (pass ``tokenizer=`` instead), and
    transformers is told not to trust remote code."""
    if not any((folder / f).exists() for f in _TOKENIZER_FILES):
        return None
    custom = _custom_tokenizer_code(folder, hf_config)
    if custom is not None:
        raise CheckpointError(
            f"{folder}: its tokenizer is custom code ({custom}), which anatomist never runs. "
            "Pass a tokenizer you trust instead: from_pretrained(..., tokenizer=tok), e.g. "
            "tok = transformers.AutoTokenizer.from_pretrained(folder, trust_remote_code=True) "
            "once you have read the code."
        )
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise CheckpointError(
            f"{folder}: cannot build its tokenizer ({type(error).__name__}: {error}). Pass a "
            "tokenizer instead: from_pretrained(..., tokenizer=tok)."
        ) from error


def _custom_tokenizer_code(folder: Path, hf_config: dict[str, Any]) -> str | None:
    """Where the folder declares a tokenizer class that exists only as its own Python code
    (an ``auto_map`` AutoTokenizer entry, in tokenizer_config.json or config.json (`hf_config`),
    while the ``tokenizer_class`` they name is not one transformers has), or None. transformers
    (with trust_remote_code=False) would refuse such a tokenizer, or fall back to a generic one
    built from tokenizer.json that may tokenize differently."""
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    tokenizer_config = folder / "tokenizer_config.json"
    sources = [(hf_config, "config.json")]
    if tokenizer_config.is_file():
        sources.insert(0, (_read_json(tokenizer_config), tokenizer_config.name))
    declared: str | None = None
    custom: str | None = None
    for settings, name in sources:  # the first one that says wins
        if not isinstance(settings, dict):
            continue
        if declared is None and isinstance(settings.get("tokenizer_class"), str):
            declared = settings["tokenizer_class"]
        auto_map = settings.get("auto_map")
        entry = auto_map.get("AutoTokenizer") if isinstance(auto_map, dict) else auto_map
        if custom is None and entry:
            custom = f"{name}'s auto_map names AutoTokenizer {entry!r}"
    if custom is None:
        return None
    if declared is not None and any(
        tokenizer_class_from_name(candidate) is not None
        for candidate in (declared, declared.removesuffix("Fast"), declared + "Fast")
    ):
        return None  # a class transformers has: the auto_map is a leftover, and nothing runs
    return custom


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
    checkpoint_layers: int | None = None,
    devices: Mapping[str, torch.device] | None = None,
) -> None:
    """Convert and assign checkpoint tensors into a model built with uninitialised weights.
    With `devices` (part name -> device, `anatomist.model.devices.plan_devices`) each weight is
    converted straight onto its part's device.

    Loading is complete or refused: every checkpoint tensor is used, or ignored by a rule of the
    family (buffers such as rotary ``inv_freq``), and every weight of the model comes from the
    checkpoint. The exceptions are spelled out: a tied output embedding is copied from the input
    embedding when the config ties them; a bias no rule of the family produces is zero (the
    architecture has none), as is one the family declares optional (`Family.optional`) when the
    checkpoint lacks it in every layer. `checkpoint_layers` is the layer count of the
    checkpoint's own config when the model was built with fewer (``first_n_layers``): the
    tensors of the later layers are skipped; otherwise a tensor of a layer beyond the model's is
    an error, as is an unknown tensor, a tensor stored twice, a shape other than the config
    implies, or a missing weight (`CheckpointError`, naming the checkpoint and the tensor).
    """
    cfg: TransformerConfig = model.cfg  # type: ignore[assignment]
    expected = dict(model.named_parameters())
    loaded: dict[str, str] = {}  # native name -> the checkpoint tensor it came from
    for hf_name, tensor in _assembled(family, _progress(tensors, progress, label), cfg, label):
        native = _converted(family, hf_name, tensor, cfg, label)
        for key, value in native.items():
            if key not in expected:
                if _skipped_layer(model, key, hf_name, label, checkpoint_layers):
                    continue
                raise CheckpointError(
                    f"{label}: tensor {hf_name!r} maps to unknown weight {key!r}."
                )
            if key in loaded:
                # Two names for one tensor (tied aliases such as BERT's decoder bias, in a model's
                # state dict) are fine; two different values for one weight are not: which one
                # wins would depend on the file order.
                stored = model.get_parameter(key).detach()
                if torch.equal(value.to(stored.device, cfg.dtype), stored):
                    continue
                raise CheckpointError(
                    f"{label}: weight {key} is stored twice with different values, as "
                    f"{loaded[key]!r} and {hf_name!r}; the checkpoint holds conflicting "
                    "tensors (shards that overlap?). Remove one copy, or download the checkpoint "
                    "again."
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
                    f"{key} the shape {tuple(value.shape)}; the config says {tuple(want)}. The "
                    "config.json and the weights disagree: use the config.json that came with "
                    "these weights."
                )
            # `_assign` gives it the layout the model built
            weight = value.to(device=_device_for(devices, key), dtype=cfg.dtype)
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
            loaded[key] = hf_name
    _fill_absent(model, family, cfg, expected, loaded, label, devices)
    for module in model.modules():
        reset = getattr(module, "reset_buffers", None)
        if callable(reset):
            reset()


def _converted(
    family: Family, hf_name: str, tensor: Tensor, cfg: TransformerConfig, label: str
) -> dict[str, Tensor]:
    """`family.convert`, with what can go wrong said in terms of the checkpoint."""
    try:
        return family.convert(hf_name, tensor, cfg)
    except KeyError:
        raise CheckpointError(
            f"{label}: unexpected tensor {hf_name!r} for the {family.name} family "
            f"(shape {tuple(tensor.shape)}). The checkpoint may be a different architecture "
            "than its config.json says."
        ) from None
    except StoredShapeError as error:
        raise CheckpointError(
            f"{label}: {error}. The file's header and config.json disagree: the file is "
            "damaged, or config.json belongs to another model; download both again."
        ) from None
    except NotImplementedError:
        raise  # an unsupported option, which says so itself (a RuntimeError, not a bad shape)
    except (RuntimeError, ValueError, IndexError) as error:
        # A transform that cannot split or reshape the tensor: its shape does not fit the config.
        raise CheckpointError(
            f"{label}: tensor {hf_name!r} (shape {tuple(tensor.shape)}) does not fit the "
            f"{family.name} family's layout for this config ({error}). The file is damaged, or "
            "config.json belongs to another model."
        ) from None


_LAYERED = re.compile(r"(?P<stack>\w+)\.(?P<layer>\d+)\.")


def _skipped_layer(
    model: nn.Module, key: str, hf_name: str, label: str, checkpoint_layers: int | None
) -> bool:
    """Whether `key`, a weight the model does not have, belongs to a layer that
    ``first_n_layers`` leaves out (then it is skipped). A layer beyond the config's count is a
    `CheckpointError`: the config and the weights disagree, and loading only some layers would
    compute something else than the checkpoint without a word."""
    match = _LAYERED.match(key)
    stack = getattr(model, match["stack"], None) if match else None
    if match is None or not isinstance(stack, nn.ModuleList):
        return False
    layer, built = int(match["layer"]), len(stack)
    if layer < built:
        return False
    if match["stack"] == "blocks" and checkpoint_layers is not None and layer < checkpoint_layers:
        return True  # first_n_layers: asked for
    declared = checkpoint_layers if match["stack"] == "blocks" and checkpoint_layers else built
    raise CheckpointError(
        f"{label}: tensor {hf_name!r} belongs to layer {layer} of {match['stack']}, but the "
        f"config gives it {declared} layer(s) (0..{declared - 1}). The config.json and the "
        "weights disagree; use the config.json that came with these weights (to load only the "
        "first layers of a checkpoint, pass first_n_layers=...)."
    )


def _fill_absent(
    model: nn.Module,
    family: Family,
    cfg: TransformerConfig,
    expected: dict[str, nn.Parameter],
    loaded: dict[str, str],
    label: str,
    devices: Mapping[str, torch.device] | None = None,
) -> None:
    """Give the weights the checkpoint does not store their values, where the family and
    config say what they are; a `CheckpointError` listing those nobody can supply."""
    loaded_kinds = {_kind(key) for key in loaded}
    missing: list[str] = []
    for key, param in expected.items():
        if key in loaded:
            continue
        if key == "unembed.W_U" and cfg.tie_word_embeddings and "embed.W_E" in loaded:
            # Tied embeddings: the checkpoint stores one matrix. Keep a separate copy for W_U so
            # weight processing (centering, folding) can change one without the other.
            W_E = model.embed.W_E.detach()  # type: ignore[union-attr, operator]
            _assign(model, key, W_E.T.to(_device_for(devices, key), copy=True))
            continue
        rules = family.producers(key)
        bias = key.rsplit(".", 1)[-1].lstrip("_").startswith("b")
        absent_by_design = bias and not rules
        # An optional bias is absent from every layer or from none: one layer without it is a
        # damaged checkpoint, not a config without biases.
        optional = bool(rules) and all(r.optional for r in rules)
        if absent_by_design or (optional and _kind(key) not in loaded_kinds):
            zeros = torch.zeros(param.shape, dtype=cfg.dtype, device=_device_for(devices, key))
            _assign(model, key, zeros)
        else:
            missing.append(key)
    if missing:
        shown = ", ".join(_described(family, key) for key in missing[:6])
        more = f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        tied = ""
        if "unembed.W_U" in missing and "embed.W_E" in loaded:
            tied = (
                " (config.json does not tie the output embedding to the input one, "
                "tie_word_embeddings, so it must be stored)"
            )
        raise CheckpointError(
            f"{label}: the checkpoint lacks {len(missing)} weight(s) the {family.name} family "
            f"needs: {shown}{more}{tied}. The files are incomplete or were saved for another "
            "configuration; download them again, or use the config.json that came with them."
        )


def _device_for(devices: Mapping[str, torch.device] | None, key: str) -> torch.device | None:
    """The device of the part weight `key` belongs to ("blocks.3.attn.W_Q" -> "blocks.3")."""
    if devices is None:
        return None
    head, _, rest = key.partition(".")
    part = f"{head}.{rest.partition('.')[0]}" if head == "blocks" else head
    return devices.get(part)


def _kind(key: str) -> str:
    """A native weight name with its layer and expert numbers replaced: the same weight in
    every layer ("blocks.3.attn.b_Q" -> "blocks.#.attn.b_Q")."""
    return re.sub(r"(?<=\.)\d+(?=\.)", "#", key)


def _described(family: Family, key: str) -> str:
    """`key`, and the checkpoint tensor name that would have given it, when it can be told."""
    rules = family.producers(key)
    if not rules:
        return key
    rule = rules[0]
    layer = _LAYERED.match(key)
    name = rule.pattern.replace(r"(?P<i>\d+)", layer["layer"] if layer else "0")
    name = re.sub(r"\(\?:[^()]*\)\?", "", name).replace("\\.", ".")
    if re.search(r"[\\()\[\]?*+|]", name):
        return f"{key} (a tensor named like {rule.pattern!r})"
    return f"{key} (a tensor named like {name!r})"


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
