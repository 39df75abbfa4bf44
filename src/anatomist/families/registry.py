"""Which family loads a checkpoint: by HF architecture name, or by config model_type."""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import Any

import anatomist.families
from anatomist.families.base import Family


def _discover() -> tuple[Family, ...]:
    """Every `FAMILY` defined by a module of this package (one file per family)."""
    found = []
    for info in sorted(pkgutil.iter_modules(anatomist.families.__path__), key=lambda m: m.name):
        if info.name in ("base", "registry", "catalog"):
            continue
        module = importlib.import_module(f"anatomist.families.{info.name}")
        family = getattr(module, "FAMILY", None)
        if isinstance(family, Family):
            found.append(family)
    return tuple(found)


FAMILIES: tuple[Family, ...] = _discover()

_BY_ARCHITECTURE = {arch: f for f in FAMILIES for arch in f.architectures}
_BY_MODEL_TYPE = {mt: f for f in FAMILIES for mt in f.model_types}


class UnsupportedArchitectureError(ValueError):
    """No family can load a checkpoint of this architecture."""


def supported_architectures() -> list[str]:
    return sorted(_BY_ARCHITECTURE)


# Architectures users ask for (shared/data/model_names.json) that no family loads, and why.
UNSUPPORTED: dict[str, str] = {
    "QWenLMHeadModel": "the first Qwen generation ships only remote code (trust_remote_code), "
    "which anatomist never runs; Qwen1.5 and later load as Qwen2",
    "GPT2LMHeadCustomModel": "a remote-code GPT-2 variant (trust_remote_code), which anatomist "
    "never runs",
    "Wav2Vec2Model": "an audio encoder, not a language model",
    "HubertModel": "an audio encoder, not a language model",
}


# Named in the error for an architecture no family ports (transformers must know it).
FALLBACK = (
    "anatomist.HookedHFModel.from_pretrained(path) wraps any transformers causal LM instead: "
    "hook points at every layer's input and output, attention, head and MLP outputs, the final "
    "norm, the logits and every submodule by its Hugging Face path, for hooks, caching, patching, "
    "the logit lens and generate (no weight views, weight processing or q/k/v hooks)."
)


def family_for_architecture(architecture: str) -> Family:
    family = _BY_ARCHITECTURE.get(architecture)
    if family is None and architecture in UNSUPPORTED:
        raise UnsupportedArchitectureError(
            f"Architecture {architecture!r} is not supported: {UNSUPPORTED[architecture]}."
        )
    if family is None:
        close = difflib.get_close_matches(architecture, list(_BY_ARCHITECTURE), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise UnsupportedArchitectureError(
            f"Architecture {architecture!r} is not supported natively.{hint} "
            f"{FALLBACK} Natively supported: {', '.join(supported_architectures())}."
        )
    return family


def family_for_config(hf_config: dict[str, Any]) -> Family:
    """The family for a Hugging Face config.json dict (architectures first, then model_type).

    A config whose ``auto_map`` points at custom code (Python files in the model folder) loads
    only when one of its architectures is one we implement natively, as transformers resolves
    it with trust_remote_code=False; otherwise it is refused here, before anything else of the
    folder is read. Nothing from a model folder is ever imported or run.
    """
    from anatomist.config import ConfigError
    from anatomist.families import lens

    if lens.is_lens_config(hf_config):
        return lens.FAMILY
    architectures = hf_config.get("architectures") or []
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures):
        raise ConfigError(
            f"config.json's architectures must be a list of class names, got {architectures!r}.",
            "architectures",
            architectures,
        )
    for arch in architectures:
        if arch in _BY_ARCHITECTURE:
            return _BY_ARCHITECTURE[arch]
    auto_map = hf_config.get("auto_map")
    if auto_map:
        named = ", ".join(architectures) or repr(hf_config.get("model_type"))
        raise UnsupportedArchitectureError(
            f"Architecture {named} is custom code shipped with the model (config.json's "
            f"auto_map: {auto_map!r}), and anatomist never runs code from a model folder. "
            f"Supported architectures: {', '.join(supported_architectures())}."
        )
    model_type = hf_config.get("model_type")
    if model_type in _BY_MODEL_TYPE:
        return _BY_MODEL_TYPE[model_type]
    archs = hf_config.get("architectures") or [model_type]
    return family_for_architecture(str(archs[0]))
