"""The classic `loading_from_pretrained` lookups over anatomist's model-name registry and loaders.

``OFFICIAL_MODEL_NAMES`` are the canonical names (mostly Hugging Face repo ids) of
``families/model_names.json`` and the packaged models; ``MODEL_ALIASES`` maps each to the short
names users type.

Configs come from the checkpoint's own config.json through its family's mapping, the same path
``from_pretrained`` takes, never from per-model tables: a local folder or ``.gguf`` file, a
packaged model, or a registry name / repo id whose config.json is in the local Hugging Face cache.
Only an uncached repo id goes further: ``transformers.AutoConfig`` fetches its config.json alone
(no weights) when online; offline that is an `UnknownModelError` saying what to download.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from anatomist.config import TransformerConfig
from anatomist.loading.checkpoints import PYTHIA, PYTHIA_V0, STANFORD_CRFM
from anatomist.loading.errors import UnknownModelError
from anatomist.loading.resolve import _registry, canonical_name
from anatomist.model.devices import check_n_devices

OFFICIAL_MODEL_NAMES: list[str] = list(_registry().entries)
MODEL_ALIASES: dict[str, list[str]] = {
    name: list(entry.aliases) for name, entry in _registry().entries.items()
}
#: The name each model is shown under: its first alias, else its official name.
DEFAULT_MODEL_ALIASES: list[str] = [
    MODEL_ALIASES[name][0] if MODEL_ALIASES.get(name) else name for name in OFFICIAL_MODEL_NAMES
]
#: Official names of the original LLaMA models, whose weights were never on the Hugging Face Hub
#: (load them from a local folder).
NON_HF_HOSTED_MODEL_NAMES: list[str] = [
    "llama-7b-hf",
    "llama-13b-hf",
    "llama-30b-hf",
    "llama-65b-hf",
]
#: Repo-id prefixes the classic loader trusted remote code for. anatomist never runs a model's
#: own code (config.json's ``auto_map`` is refused); the constant is kept for code that reads it.
NEED_REMOTE_CODE_MODELS: tuple[str, ...] = (
    "bigcode/santacoder",
    "Qwen/Qwen-",
    "Qwen/Qwen3-",
    "microsoft/phi-2",
    "microsoft/phi-4",
    "apple/OpenELM",
    "openai/gpt-oss-",
    "swiss-ai/Apertus-",
)
#: Training checkpoints published as revisions (see `anatomist.loading.checkpoints`).
STANFORD_CRFM_CHECKPOINTS: list[int] = list(STANFORD_CRFM.steps)
PYTHIA_CHECKPOINTS: list[int] = list(PYTHIA.steps)
PYTHIA_V0_CHECKPOINTS: list[int] = list(PYTHIA_V0.steps)


def __getattr__(name: str) -> Any:
    # `AutoConfig` is looked up here only when used, so importing this module (as the compat
    # layer does) does not import transformers.
    if name == "AutoConfig":
        from transformers import AutoConfig

        return AutoConfig
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def make_model_alias_map() -> dict[str, str]:
    """Every alias (lower-cased) and official name -> the official name, as the classic did."""
    mapping: dict[str, str] = {}
    for official, aliases in MODEL_ALIASES.items():
        for alias in aliases:
            mapping[alias.lower()] = official
        mapping[official.lower()] = official
    return mapping


def get_official_model_name(model_name: str) -> str:
    """The official name of ``model_name`` (an official name or an alias, any case).

    Raises:
        UnknownModelError (also a ValueError): the name is unknown; the message lists the closest.
    """
    return canonical_name(model_name)


# --- configs --------------------------------------------------------------------------------------
def _is_local(model_name: str | os.PathLike[str]) -> bool:
    from anatomist.loading.resolve import _looks_like_path

    text = os.fspath(model_name)
    return isinstance(model_name, os.PathLike) or _looks_like_path(text) or Path(text).exists()


def _read_hf_config(
    model_name: str | os.PathLike[str], **kwargs: Any
) -> tuple[str, dict[str, Any]]:
    """``(name, config.json dict)`` of a model, without reading its weights (module docstring)."""
    from anatomist.loading.hub import env_offline, hf_cache_dir
    from anatomist.loading.pretrained import _read_config
    from anatomist.loading.resolve import _looks_like_repo_id, _lookup, _packaged_model

    text = os.fspath(model_name).strip()
    if _is_local(model_name) or _packaged_model(text) is not None:
        from anatomist.loading.resolve import resolve_checkpoint

        resolved = resolve_checkpoint(model_name, local_files_only=True)
        if resolved.kind == "gguf":
            from anatomist.loading.gguf import read_gguf

            return resolved.name, read_gguf(resolved.path).hf_config
        return resolved.name, _read_config(resolved.path / "config.json")
    repo_id = _lookup(text)
    if repo_id is None:
        if not _looks_like_repo_id(text):
            canonical_name(text)  # raises, naming the closest known names
        repo_id = text
    from huggingface_hub import try_to_load_from_cache

    revision = kwargs.get("revision")
    cached = try_to_load_from_cache(repo_id, "config.json", hf_cache_dir(), revision=revision)
    if isinstance(cached, str):
        return repo_id, _read_config(Path(cached))
    offline = bool(kwargs.get("local_files_only")) or env_offline()
    try:
        hf = __getattr__("AutoConfig").from_pretrained(
            repo_id, revision=revision, local_files_only=offline, trust_remote_code=False
        )
    except (OSError, ValueError) as error:
        reason = "it is offline" if offline else f"the Hub did not give it ({error})"
        raise UnknownModelError(
            f"The config.json of {text!r} (Hugging Face repo {repo_id!r}) is not in the local "
            f"Hugging Face cache ({hf_cache_dir()}) and cannot be fetched: {reason}. Pass a "
            f"local folder, or download it: `hf download {repo_id} config.json`."
        ) from error
    return repo_id, hf.to_dict() if hasattr(hf, "to_dict") else dict(vars(hf))


def _build_config(hf_config: dict[str, Any]) -> TransformerConfig:
    """The family's mapping of a config.json dict (encoders and T5 through their own builders)."""
    from anatomist.families import bert, t5
    from anatomist.families.registry import family_for_config

    family = family_for_config(hf_config)
    if family is bert.FAMILY:
        return bert.build_encoder_config(hf_config)
    if family is t5.FAMILY:
        return t5.build_encoder_decoder_config(hf_config)
    return family.build_config(hf_config)


def convert_hf_model_config(model_name: str, **kwargs: Any) -> dict[str, Any]:
    """A model's config as a dict of `HookedTransformerConfig` fields, from its config.json
    through its family's mapping. `model_name`: a folder, ``.gguf`` file, registry name, alias or
    repo id; `kwargs` may hold ``revision`` and ``local_files_only``."""
    _, hf_config = _read_hf_config(model_name, **kwargs)
    return _build_config(hf_config).to_dict()


def convert_neel_model_config(official_model_name: str, **kwargs: Any) -> dict[str, Any]:
    """The config of a model in the classic HookedTransformer format (the toy models' own
    config.json): the same mapping as `convert_hf_model_config` (see `anatomist.families.lens`)."""
    return convert_hf_model_config(official_model_name, **kwargs)


def get_pretrained_model_config(
    model_name: str,
    hf_cfg: dict[str, Any] | None = None,
    checkpoint_index: int | None = None,
    checkpoint_value: int | None = None,
    fold_ln: bool = False,
    device: str | torch.device | None = None,
    n_devices: int = 1,
    default_prepend_bos: bool | None = None,
    dtype: torch.dtype = torch.float32,
    first_n_layers: int | None = None,
    n_ctx: int | None = None,
    **kwargs: Any,
) -> TransformerConfig:
    """The `HookedTransformerConfig` a model loads with, without loading its weights.

    `hf_cfg` is a config.json dict to use instead of the model's own. `fold_ln=True` gives the
    normalization type of a folded model (``LNPre``/``RMSPre``); `checkpoint_index` /
    `checkpoint_value` fill the checkpoint fields (`get_checkpoint_labels`); `first_n_layers`
    and `n_ctx` override the depth and context (a longer `n_ctx` than the model's logs a
    warning). Other `kwargs`: ``revision``, ``local_files_only``.
    """
    if hf_cfg is not None:
        name = os.fspath(model_name)
        cfg = _build_config(hf_cfg)
    else:
        name, hf_config = _read_hf_config(model_name, **kwargs)
        cfg = _build_config(hf_config)
    cfg.model_name = name.rstrip("/").split("/")[-1]
    cfg.dtype = dtype
    cfg.device = None if device is None else str(device)
    check_n_devices(n_devices)
    cfg.n_devices = n_devices
    if fold_ln:
        if cfg.normalization_type in ("LN", "RMS"):
            cfg.normalization_type += "Pre"
        elif cfg.normalization_type not in ("LNPre", "RMSPre"):
            logging.warning(
                "fold_ln=True has nothing to fold: normalization_type is %r.",
                cfg.normalization_type,
            )
    if checkpoint_index is not None or checkpoint_value is not None:
        from anatomist.loading.checkpoints import select_label

        labels, label_type = get_checkpoint_labels(model_name, **kwargs)
        index, value = select_label(
            sorted(labels), checkpoint_index, checkpoint_value, name, label_type
        )
        cfg.from_checkpoint = True
        cfg.checkpoint_index, cfg.checkpoint_value = index, value
        cfg.checkpoint_label_type = label_type
    if default_prepend_bos is not None:
        cfg.default_prepend_bos = default_prepend_bos
    if first_n_layers is not None:
        if not 0 < first_n_layers <= cfg.n_layers:
            raise ValueError(f"first_n_layers must be in 1..{cfg.n_layers}, got {first_n_layers}.")
        cfg.n_layers = first_n_layers
    if n_ctx is not None:
        if n_ctx > cfg.n_ctx:
            logging.warning(
                "n_ctx=%d is longer than the %d positions %s was trained on; its outputs past "
                "them may be unreliable, and attention memory grows with the square of n_ctx.",
                n_ctx,
                cfg.n_ctx,
                name,
            )
        cfg.n_ctx = n_ctx
    return cfg


def get_num_params_of_pretrained(model_name: str) -> int:
    """The classic parameter count (attention and MLP weight matrices) of a pretrained model."""
    return get_pretrained_model_config(model_name).n_params


def get_checkpoint_labels(model_name: str, **kwargs: Any) -> tuple[list[int], str]:
    """``(labels, label_type)`` of a model's training checkpoints, sorted; `label_type` is
    ``"step"`` or ``"token"``. Pythia and stanford-crfm follow fixed schedules; the toy models'
    ``checkpoints/*_<N>.pth`` files are listed from a local folder, the Hugging Face cache, or,
    when online, the Hub.

    Raises:
        ValueError: the model publishes no training checkpoints.
        UnknownModelError: they cannot be listed offline.
    """
    from anatomist.loading import checkpoints as ckpt

    text = os.fspath(model_name).strip()
    if _is_local(model_name):
        files = ckpt.file_checkpoints(ckpt._folder_checkpoint_names(Path(text)))
        if not files:
            raise ValueError(f"Folder {text!r} publishes no training checkpoints.")
        labels = [f.label for f in files]
        return labels, ckpt.label_type(labels)
    repo_id = ckpt._repo_id(text)
    schedule = next((s for s in ckpt.SCHEDULES if s.matches(repo_id)), None)
    if schedule is not None:
        return list(schedule.steps), "step"
    from anatomist.loading.hub import env_offline, hf_cache_dir, hub_repo_files

    if bool(kwargs.get("local_files_only")) or env_offline():
        snapshot = ckpt._cached_snapshot(repo_id, hf_cache_dir())
        names = ckpt._folder_checkpoint_names(snapshot) if snapshot is not None else []
        if not names:
            raise UnknownModelError(
                f"The training checkpoints of {repo_id!r} are not in the local Hugging Face "
                "cache and the Hub is not consulted offline; download them on a machine with "
                f"network access: `hf download {repo_id} --include 'checkpoints/*.pth'`."
            )
    else:
        names = hub_repo_files(repo_id, hf_cache_dir())
    files = ckpt.file_checkpoints(names)
    if not files:
        raise ValueError(f"{repo_id!r} publishes no training checkpoints.")
    labels = [f.label for f in files]
    return labels, ckpt.label_type(labels)


# --- state dicts ----------------------------------------------------------------------------------
def get_pretrained_state_dict(
    official_model_name: str,
    cfg: TransformerConfig,
    hf_model: Any | None = None,
    dtype: torch.dtype = torch.float32,
    **kwargs: Any,
) -> dict[str, torch.Tensor]:
    """A checkpoint's weights in anatomist's (the classic) parameter names and shapes,
    unprocessed. `cfg` picks the training checkpoint (``checkpoint_value``) and the depth
    (``n_layers``); `hf_model` reads the weights of an instantiated Hugging Face model instead
    of files. Loads through the model class of the checkpoint's family (`HookedTransformer`,
    `HookedEncoder` or `HookedEncoderDecoder`), so every tensor is checked as in
    ``from_pretrained``. `kwargs`: ``revision``, ``local_files_only`` (``torch_dtype`` overrides
    `dtype`)."""
    from anatomist.families import bert, t5
    from anatomist.families.registry import family_for_config

    dtype = kwargs.pop("torch_dtype", dtype)
    options: dict[str, Any] = {
        k: kwargs[k] for k in ("revision", "local_files_only") if k in kwargs
    }
    if hf_model is not None:
        hf_config = hf_model.config.to_dict()
    else:
        hf_config = _read_hf_config(official_model_name, **options)[1]
    family = family_for_config(hf_config)
    common: dict[str, Any] = {"hf_model": hf_model, "dtype": dtype, "progress": False, **options}
    model: nn.Module
    if family is bert.FAMILY:
        from anatomist.model.encoder import HookedEncoder

        model = HookedEncoder.from_pretrained(official_model_name, **common)
    elif family is t5.FAMILY:
        from anatomist.model.encoder_decoder import HookedEncoderDecoder

        model = HookedEncoderDecoder.from_pretrained(official_model_name, **common)
    else:
        from anatomist.model.transformer import HookedTransformer

        checkpoint = {"checkpoint_value": cfg.checkpoint_value} if cfg.from_checkpoint else {}
        full = _build_config(hf_config).n_layers
        layers = {"first_n_layers": cfg.n_layers} if cfg.n_layers < full else {}
        model = HookedTransformer.from_pretrained_no_processing(
            official_model_name, **common, **checkpoint, **layers
        )
    return model.state_dict()


def fill_missing_keys(
    model: nn.Module, state_dict: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Add to `state_dict` (in place, and return it) every key of `model.state_dict()` it lacks,
    with the model's current value; a missing weight matrix (``W_*``) is logged as a warning.
    Keys of an attached Hugging Face model (``hf_model.*``) are left out."""
    defaults = model.state_dict()
    for key in defaults.keys() - state_dict.keys():
        if "hf_model" in key:
            continue
        if "W_" in key:
            logging.warning(
                f"Missing key for a weight matrix in pretrained, filled in with an empty tensor: {key}"
            )
        state_dict[key] = defaults[key]
    return state_dict


@dataclasses.dataclass
class Config:
    """The classic basic config: a model's shape and a few training settings."""

    d_model: int = 768
    debug: bool = True
    layer_norm_eps: float = 1e-5
    d_vocab: int = 50257
    init_range: float = 0.02
    n_ctx: int = 1024
    d_head: int = 64
    d_mlp: int = 3072
    n_heads: int = 12
    n_layers: int = 12


def get_basic_config(model_name: str, **kwargs: Any) -> Config:
    """A pretrained model's shape as a basic `Config` (`kwargs` go to
    `get_pretrained_model_config`); ``layer_norm_eps`` is the config's ``eps``."""
    cfg = get_pretrained_model_config(model_name, **kwargs)
    values = {
        field.name: getattr(cfg, field.name)
        for field in dataclasses.fields(Config)
        if hasattr(cfg, field.name)
    }
    values.setdefault("layer_norm_eps", cfg.eps)
    if values.get("init_range", 0) < 0:  # -1: the default init, 0.8 / sqrt(d_model)
        values["init_range"] = 0.8 / cfg.d_model**0.5
    return Config(**values)


__all__ = [
    "DEFAULT_MODEL_ALIASES",
    "MODEL_ALIASES",
    "NEED_REMOTE_CODE_MODELS",
    "NON_HF_HOSTED_MODEL_NAMES",
    "OFFICIAL_MODEL_NAMES",
    "PYTHIA_CHECKPOINTS",
    "PYTHIA_V0_CHECKPOINTS",
    "STANFORD_CRFM_CHECKPOINTS",
    "Config",
    "convert_hf_model_config",
    "convert_neel_model_config",
    "fill_missing_keys",
    "get_basic_config",
    "get_checkpoint_labels",
    "get_num_params_of_pretrained",
    "get_official_model_name",
    "get_pretrained_model_config",
    "get_pretrained_state_dict",
    "make_model_alias_map",
]
