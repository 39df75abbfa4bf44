"""The classic HookedTransformer checkpoint format: a state dict in the classic naming, and a
config.json of either kind the classic library loaded.

- **A HookedTransformerConfig dump** (``normalization_type``, ``positional_embedding_type``, ...):
  fields this version does not know are ignored, except those that change the computation, which
  must be supported or raise.
- **The toy models' own config.json** (``NeelNanda/Attn_Only_*``, ``GELU_*``, ``SoLU_*``, the
  shortformer attn-only-2l-demo): their training script's settings, recognised by its keys
  ``normalization`` / ``shortformer_pos`` / ``architecture``. As the classic
  ``convert_neel_model_config`` did, only the shape, ``act_fn``, ``attn_only``, ``final_rms``,
  ``tokenizer_name`` and those three keys are read (``normalization`` is the normalization type,
  ``shortformer_pos`` selects shortformer positions); the training settings (learning rates,
  ``ln_eps``, ...) are ignored. ``architecture`` (default ``"neel"``) becomes
  ``original_architecture``.

Weight names and shapes are native, so tensors pass through unchanged, except in the old Pile
SoLU models (``NeelNanda/SoLU_{n}L_v*_old``, aliases ``solu-*-pile``): those whose config says
``architecture: "neel-solu-old"``, or, without that key, whose repo (or folder) name contains
``_old`` (the classic library's rule). Their tensor names say ``norm`` for ``ln`` and ``ln.`` for
``ln_final.``, and their training code stored some matrices transposed, depending on the depth:
up to 6 layers every ``W_*`` except ``W_pos``, and up to 8 layers ``W_pos`` (as the classic
``convert_neel_solu_old_weights``). Buffers the classic model saved (``IGNORE``, ``mask``) are
skipped.

Not supported: the classic options in `_UNSUPPORTED` (local attention, experts, ...) and other
``architecture`` values (``mingpt``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

from torch import Tensor

from anatomist.config import TransformerConfig
from anatomist.families.base import Family, WeightRule, same

# Classic config fields that change what the model computes, which we cannot honour (yet).
_UNSUPPORTED = {
    "use_local_attn": False,
    "num_experts": None,
    "use_normalization_before_and_after": False,
    "trust_remote_code": False,
}

# Keys only the toy models' training config has (HookedTransformerConfig names them otherwise).
_TRAINING_CONFIG_KEYS = ("normalization", "shortformer_pos", "architecture")
# What the classic library read from a training config; everything else there is training state.
_TRAINING_REQUIRED = (
    "d_model", "n_layers", "d_mlp", "d_head", "n_heads", "n_ctx", "d_vocab", "act_fn", "attn_only",
)  # fmt: skip
_ARCHITECTURES = ("neel", "neel-solu-old")
OLD_SOLU = "neel-solu-old"


def is_lens_config(hf: dict[str, Any]) -> bool:
    """A classic HookedTransformer config or a toy model's training config (not a Hugging Face
    one)."""
    return "d_model" in hf and "n_layers" in hf and "model_type" not in hf


def build_config(hf: dict[str, Any]) -> TransformerConfig:
    for key, harmless in _UNSUPPORTED.items():
        value = hf.get(key, harmless)
        if value not in (harmless, None, False):
            raise NotImplementedError(
                f"Classic checkpoint option {key}={value!r} is not supported."
            )
    if any(key in hf for key in _TRAINING_CONFIG_KEYS):
        values = _from_training_config(hf)
    else:
        values = dict(hf)
        # The classic converters' labels describe weights they had already converted.
        if values.get("original_architecture") in _ARCHITECTURES:
            values["original_architecture"] = None
    if isinstance(values.get("dtype"), str):
        values["dtype"] = values["dtype"].removeprefix("torch.")
    if values.get("d_mlp") in (-1, None) and values.get("attn_only"):
        values["d_mlp"] = None
    for key in ("device", "n_devices"):
        values.pop(key, None)
    cfg = TransformerConfig.from_dict(values)
    cfg.original_architecture = values.get("original_architecture") or "legacy-lens-checkpoint"
    return cfg


def _from_training_config(hf: dict[str, Any]) -> dict[str, Any]:
    """A toy model's training config, read as the classic ``convert_neel_model_config`` did."""
    missing = [key for key in _TRAINING_REQUIRED if key not in hf]
    if "normalization" not in hf and "normalization_type" not in hf:
        missing.append("normalization")
    if missing:
        raise ValueError(
            f"This toy-model config.json (it has {', '.join(_TRAINING_CONFIG_KEYS)} keys) lacks "
            f"{', '.join(missing)}."
        )
    architecture = hf.get("architecture", "neel")
    if architecture not in _ARCHITECTURES:
        raise NotImplementedError(
            f"Classic checkpoint architecture {architecture!r} is not supported "
            f"(supported: {', '.join(_ARCHITECTURES)})."
        )
    values = {key: hf[key] for key in _TRAINING_REQUIRED}
    values["normalization_type"] = hf.get("normalization", hf.get("normalization_type"))
    values["positional_embedding_type"] = "shortformer" if hf.get("shortformer_pos") else "standard"
    values["final_rms"] = bool(hf.get("final_rms", False))
    values["tokenizer_name"] = hf.get("tokenizer_name")
    values["original_architecture"] = architecture
    return values


def is_old_solu(cfg: TransformerConfig) -> bool:
    """Whether the checkpoint stores the old Pile SoLU layout. The repo name is known only once
    loading has begun (cfg.model_name), so a model recognised by it is recorded here."""
    if cfg.original_architecture == "neel" and "_old" in PurePath(cfg.model_name).name:
        cfg.original_architecture = OLD_SOLU
    return cfg.original_architecture == OLD_SOLU


_BLOCK = re.compile(r"blocks\.(\d+)\.")


def from_old_solu_layout(name: str, tensor: Tensor, cfg: TransformerConfig) -> tuple[str, Tensor]:
    """One tensor of an old Pile SoLU checkpoint under its native name and shape."""
    name = name.replace("norm", "ln")
    if name.startswith("ln."):
        name = "ln_final." + name.removeprefix("ln.")
    block = _BLOCK.match(name)
    if block is not None and int(block.group(1)) >= cfg.n_layers:
        # Which matrices are transposed depends on the checkpoint's depth, not the loaded one.
        raise NotImplementedError(
            "first_n_layers is not supported for the old Pile SoLU checkpoints: which of their "
            "matrices are stored transposed depends on the full depth. Load every layer."
        )
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "W_pos":
        transposed = cfg.n_layers <= 8  # 8 layers: only W_pos (a bug of their training code)
    else:
        transposed = leaf.startswith("W_") and cfg.n_layers <= 6
    return name, tensor.transpose(-2, -1) if transposed else tensor


@dataclass(frozen=True)
class LensFamily(Family):
    """Names pass through; old Pile SoLU checkpoints are converted first."""

    def convert(self, name: str, tensor: Tensor, cfg: TransformerConfig) -> dict[str, Tensor]:
        if is_old_solu(cfg):
            name, tensor = from_old_solu_layout(name, tensor, cfg)
        return super().convert(name, tensor, cfg)


FAMILY = LensFamily(
    name="lens",
    architectures=("legacy-lens-checkpoint",),
    model_types=(),
    build_config=build_config,
    rules=(WeightRule(r"(?P<name>.+\.(?:W_\w+|b_\w+|w|b|_W_\w+|_b_\w+))", ("{name}",), same),),
    ignore=(r".*\.IGNORE", r".*\.mask", r".*\.inv_freq", r".*rotary_(?:sin|cos)"),
)
