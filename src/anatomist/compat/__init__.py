"""Run classic TransformerLens code on anatomist: ``import anatomist.compat``.

After this import, ``import transformer_lens`` and the classic module paths
(``transformer_lens.HookedTransformer``, ``transformer_lens.utils``, ``transformer_lens.hook_points``,
``transformer_lens.components.mlps.can_be_used_as_mlp``, ...) resolve to anatomist's own modules
and objects. It works whether or not a ``transformer-lens`` distribution is installed: a finder
placed first on ``sys.meta_path`` answers every ``transformer_lens`` import of this process, and
nothing on disk (site-packages included) is touched. Without editing the code::

    python -m anatomist.compat script.py [args]     # or: python -m anatomist.compat -m pytest ...

The layer holds names only. Each classic path is either one of anatomist's modules itself (the
same module object) or a file under ``anatomist/compat/transformer_lens/`` that imports
anatomist's objects under their classic names; no behaviour lives here. docs/compat.md lists
the paths.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import ModuleType

_ROOT = "transformer_lens"
_HOME = f"{__name__}.{_ROOT}"

# Classic module path -> the anatomist module that *is* it. Paths not listed here are alias
# files under anatomist/compat/transformer_lens/ (packages, and modules that gather names from
# several of anatomist's modules).
MODULES: dict[str, str] = {
    "ActivationCache": "anatomist.cache",
    "FactoredMatrix": "anatomist.analysis.factored_matrix",
    "HookedTransformerConfig": "anatomist.config",
    "config.hooked_transformer_config": "anatomist.config",
    "config.transformer_lens_config": "anatomist.config",
    "hook_points": "anatomist.hooks",
    "HookedRootModule": "anatomist.hooks",
    "HookedTransformer": "anatomist.model.transformer",
    "HookedEncoder": "anatomist.model.encoder",
    "BertNextSentencePrediction": "anatomist.model.encoder",
    "HookedEncoderDecoder": "anatomist.model.encoder_decoder",
    "past_key_value_caching": "anatomist.model.kv_cache",
    "cache.key_value_cache": "anatomist.model.kv_cache",
    "cache.key_value_cache_entry": "anatomist.model.kv_cache",
    "components.mlps.can_be_used_as_mlp": "anatomist.model.mlp",
    "SVDInterpreter": "anatomist.analysis.svd",
    "utils": "anatomist.utils",
    "evals": "anatomist.analysis.evals",
    "patching": "anatomist.analysis.patching",
    "head_detector": "anatomist.analysis.head_detector",
    "loading_from_pretrained": "anatomist.loading.names",
    "utilities.hf_utils": "anatomist.loading.hub_files",
    "train": "anatomist.train",
}

# Classic modules named after the class they hold: the package attribute is the class (as in the
# classic `from .HookedTransformer import HookedTransformer`), the submodule stays importable.
CLASS_MODULES = (
    "ActivationCache",
    "FactoredMatrix",
    "HookedTransformerConfig",
    "HookedRootModule",
    "HookedTransformer",
    "HookedEncoder",
    "HookedEncoderDecoder",
    "SVDInterpreter",
    "BertNextSentencePrediction",
)


def _target(fullname: str) -> str | None:
    if fullname == _ROOT:
        return _HOME
    if not fullname.startswith(_ROOT + "."):
        return None
    rest = fullname[len(_ROOT) + 1 :]
    if rest in MODULES:
        return MODULES[rest]
    home = f"{_HOME}.{rest}"
    try:
        found = importlib.util.find_spec(home)
    except ModuleNotFoundError:
        found = None
    return home if found is not None else None


class _AliasLoader(importlib.abc.Loader):
    _ATTRS = ("__name__", "__spec__", "__loader__", "__package__", "__path__", "__file__")

    def __init__(self, target: str) -> None:
        self.target = target
        self._saved: dict[str, object] = {}

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self._saved = {a: getattr(module, a) for a in self._ATTRS if hasattr(module, a)}
        return module

    def exec_module(self, module: ModuleType) -> None:
        """The module ran when anatomist imported it under its own name; the import system has
        just stamped the alias's name and spec on it, so put anatomist's own back."""
        for attr, value in self._saved.items():
            setattr(module, attr, value)


class TransformerLensFinder(importlib.abc.MetaPathFinder):
    """Answers `transformer_lens` imports with anatomist's modules (names only)."""

    def find_spec(self, fullname, path=None, target=None):  # type: ignore[no-untyped-def]
        name = _target(fullname)
        if name is None:
            if fullname.startswith(_ROOT + "."):
                raise ModuleNotFoundError(
                    f"{fullname} has no anatomist equivalent: anatomist.compat provides the classic "
                    "HookedTransformer interface (docs/compat.md lists the module paths), not "
                    "transformer_lens 3.x/4.x's TransformerBridge, LIT or weight-conversion modules",
                    name=fullname,
                )
            return None
        return importlib.machinery.ModuleSpec(fullname, _AliasLoader(name), is_package=True)


def _installed() -> TransformerLensFinder | None:
    for finder in sys.meta_path:
        if isinstance(finder, TransformerLensFinder):
            return finder
    return None


def install() -> None:
    """Make `import transformer_lens` resolve to anatomist in this process (idempotent).

    A real `transformer_lens` imported before this call is dropped from `sys.modules` (with a
    warning), so later imports see anatomist; objects already taken from it stay what they were.
    """
    if _installed() is not None and sys.modules.get(_ROOT) is sys.modules.get(_HOME):
        return
    stale = [
        name
        for name in sys.modules
        if (name == _ROOT or name.startswith(_ROOT + "."))
        and not getattr(sys.modules[name], "__name__", "").startswith("anatomist")
    ]
    if stale:
        warnings.warn(
            "transformer_lens was imported before anatomist.compat; its modules are replaced by "
            "anatomist's for later imports. Import anatomist.compat first.",
            stacklevel=2,
        )
        for name in stale:
            del sys.modules[name]
    if _installed() is None:
        sys.meta_path.insert(0, TransformerLensFinder())
    package = importlib.import_module(_ROOT)
    # Import the class-named submodules first, then put the classes back on the package: a later
    # `import transformer_lens.HookedTransformer` would otherwise replace the class attribute
    # with the module.
    for name in CLASS_MODULES:
        module = importlib.import_module(f"{_ROOT}.{name}")
        setattr(package, name, getattr(module, name))


def uninstall() -> None:
    """Undo `install()`: remove the finder and every `transformer_lens` module from sys.modules."""
    sys.meta_path[:] = [f for f in sys.meta_path if not isinstance(f, TransformerLensFinder)]
    for name in [n for n in sys.modules if n == _ROOT or n.startswith(_ROOT + ".")]:
        del sys.modules[name]


install()

__all__ = ["CLASS_MODULES", "MODULES", "TransformerLensFinder", "install", "uninstall"]
