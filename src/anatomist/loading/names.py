"""The classic `loading_from_pretrained` lookups over anatomist's model-name registry.

``OFFICIAL_MODEL_NAMES`` are the canonical names (mostly Hugging Face repo ids) of
``families/model_names.json`` and the packaged models; ``MODEL_ALIASES`` maps each to the short
names users type.
"""

from __future__ import annotations

from anatomist.loading.resolve import _registry, canonical_name

OFFICIAL_MODEL_NAMES: list[str] = list(_registry().entries)
MODEL_ALIASES: dict[str, list[str]] = {
    name: list(entry.aliases) for name, entry in _registry().entries.items()
}


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


__all__ = [
    "MODEL_ALIASES",
    "OFFICIAL_MODEL_NAMES",
    "get_official_model_name",
    "make_model_alias_map",
]
