"""Hugging Face repos: the local cache (offline) and the Hub (only when online).

`resolve` decides *which* repo a name means; this module finds that repo's files: first in the
local cache without touching the network, then, unless offline, on the Hub with a short timeout.
Offline settings (``HF_HUB_OFFLINE``, ``TRANSFORMERS_OFFLINE``) and cache locations
(``HF_HUB_CACHE``, ``HF_HOME``) are read at call time, not at import.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from collections.abc import Iterator
from pathlib import Path

from anatomist.loading.errors import CheckpointError, UnknownModelError

#: Seconds to wait for the Hugging Face Hub to answer the first request before declaring it
#: unreachable. The first request also decides which files to fetch, so it stays short.
HUB_TIMEOUT_S = 10.0

#: Files fetched from a Hugging Face repo besides the weights: configuration and tokenizer.
CONFIG_AND_TOKENIZER_PATTERNS: tuple[str, ...] = (
    "config.json",
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "spiece.model",
    "sentencepiece.bpe.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
    "chat_template.json",
)

#: Weight files, most preferred first: a single file, then a sharded index.
SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
BIN_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")

_ENV_TRUE = frozenset({"1", "ON", "YES", "TRUE"})


def _env_true(name: str) -> bool:
    return os.environ.get(name, "").strip().upper() in _ENV_TRUE


def env_offline() -> bool:
    """Whether the environment asks for offline mode, read now (not at import time)."""
    return _env_true("HF_HUB_OFFLINE") or _env_true("TRANSFORMERS_OFFLINE")


def hf_cache_dir() -> Path:
    """The Hugging Face hub cache folder, honouring ``HF_HUB_CACHE`` and ``HF_HOME`` as set now.

    ``huggingface_hub`` reads these variables once at import; reading them here as well means a
    change made later in the process (as tests do) still takes effect.
    """
    for variable in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        value = os.environ.get(variable)
        if value:
            return Path(os.path.expandvars(os.path.expanduser(value)))
    home = os.environ.get("HF_HOME")
    if home:
        return Path(os.path.expandvars(os.path.expanduser(home))) / "hub"
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _weights_present(folder: Path) -> bool:
    """Whether ``folder`` holds complete weights that :mod:`.safetensors` can read."""
    from anatomist.loading.safetensors import checkpoint_files

    try:
        checkpoint_files(folder)
    except CheckpointError:
        return False
    return True


def from_cache(repo_id: str, revision: str | None, cache_dir: Path) -> tuple[Path | None, str]:
    """Look ``repo_id`` up in the local HF cache without any network access.

    Returns the snapshot folder, or ``None`` and a sentence saying why it is not usable.
    """
    from huggingface_hub import snapshot_download

    try:
        folder = Path(
            snapshot_download(
                repo_id,
                revision=revision,
                cache_dir=cache_dir,
                local_files_only=True,
                allow_patterns=list(CONFIG_AND_TOKENIZER_PATTERNS),
            )
        )
    except ValueError as error:  # HFValidationError: malformed repo id or revision
        raise UnknownModelError(
            f"{repo_id!r} is not a valid Hugging Face repo id or revision ({error})."
        ) from error
    except Exception as error:  # LocalEntryNotFoundError, IncompleteSnapshotError, OSError
        if type(error).__name__ == "IncompleteSnapshotError":
            return None, f"its cached snapshot is incomplete ({error})"
        return None, "it is not in the local Hugging Face cache"
    if not (folder / "config.json").is_file():
        return None, f"its cached snapshot {str(folder)!r} has no config.json"
    if not _weights_present(folder):
        return None, f"its cached snapshot {str(folder)!r} has no complete weights"
    return folder, ""


def _network_error_types() -> tuple[type[BaseException], ...]:
    """Exception types that mean "the Hub could not be reached" across huggingface_hub versions."""
    types: list[type[BaseException]] = [OSError, TimeoutError]
    try:
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        types += [HfHubHTTPError, OfflineModeIsEnabled]
    except ImportError:  # pragma: no cover - older huggingface_hub
        pass
    for module, attribute in (
        ("httpx2", "TransportError"),
        ("httpx", "TransportError"),
        ("requests", "RequestException"),
    ):
        try:
            imported = __import__(module)
        except ImportError:
            continue
        error_type = getattr(imported, attribute, None)
        if isinstance(error_type, type) and issubclass(error_type, BaseException):
            types.append(error_type)
    return tuple(types)


def _hub_repo_files(repo_id: str, revision: str | None) -> list[str]:
    """List the files of a Hub repo, failing within :data:`HUB_TIMEOUT_S` when unreachable."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo_id, revision=revision, timeout=HUB_TIMEOUT_S)
    return [sibling.rfilename for sibling in info.siblings or []]


def _hub_download(repo_id: str, revision: str | None, cache_dir: Path, patterns: list[str]) -> Path:
    """Download the files matching ``patterns`` into the HF cache and return the snapshot folder."""
    from huggingface_hub import snapshot_download

    return Path(
        snapshot_download(
            repo_id,
            revision=revision,
            cache_dir=cache_dir,
            allow_patterns=patterns,
            etag_timeout=HUB_TIMEOUT_S,
        )
    )


def _hub_read_index(repo_id: str, revision: str | None, cache_dir: Path, index: str) -> list[str]:
    """Download a sharded-checkpoint index and return the shard file names it lists."""
    from huggingface_hub import hf_hub_download

    index_path = hf_hub_download(
        repo_id, index, revision=revision, cache_dir=cache_dir, etag_timeout=HUB_TIMEOUT_S
    )
    try:
        weight_map = json.loads(Path(index_path).read_text(encoding="utf-8"))["weight_map"]
        return sorted({str(shard) for shard in weight_map.values()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise CheckpointError(
            f"The index {index!r} of Hugging Face repo {repo_id!r} (cached at {index_path}) "
            f"is damaged: {error}"
        ) from error


def _hub_weight_files(
    repo_id: str, revision: str | None, cache_dir: Path, repo_files: list[str]
) -> list[str]:
    """Pick the weight files to fetch: safetensors when the repo has them, else ``.bin``, else
    a single top-level ``.pth``/``.pt`` state dict (the classic toy models, whose training
    checkpoints under ``checkpoints/`` are not fetched)."""
    available = set(repo_files)
    for single, index in (SAFETENSORS_WEIGHTS, BIN_WEIGHTS):
        if single in available:
            return [single]
        if index in available:
            return [index, *_hub_read_index(repo_id, revision, cache_dir, index)]
    pickled = [f for f in repo_files if "/" not in f and f.endswith((".pth", ".pt"))]
    if len(pickled) == 1:
        return pickled
    shown = ", ".join(sorted(repo_files)[:20]) or "no files"
    raise CheckpointError(
        f"Hugging Face repo {repo_id!r} has no weights anatomist can read: looked for "
        f"{', '.join(SAFETENSORS_WEIGHTS + BIN_WEIGHTS)} and a single top-level *.pth; it holds "
        f"{shown}."
    )


class HubUnreachableError(UnknownModelError):
    """The Hugging Face Hub could not be reached (a network error or a timeout)."""


_OFFLINE_ADVICE = (
    "Download it on a machine with network access, set HF_HUB_CACHE/HF_HOME to a cache that "
    "holds it, or pass a local folder or .gguf file."
)


@contextlib.contextmanager
def _hub_errors(
    repo_id: str, revision: str | None, cache_dir: Path, hint: str, unreachable: str
) -> Iterator[None]:
    """Turn the Hub's exceptions into anatomist's, each saying what to do next.

    ``unreachable`` opens the message raised when the Hub cannot be reached.
    """
    from huggingface_hub.errors import (
        GatedRepoError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    try:
        yield
    except RevisionNotFoundError as error:
        raise UnknownModelError(
            f"Hugging Face repo {repo_id!r} has no revision {revision!r}."
        ) from error
    except GatedRepoError as error:
        raise UnknownModelError(
            f"Hugging Face repo {repo_id!r} is gated: accept its licence on the Hub and log in "
            f"(`hf auth login`), or pass a local folder. ({error})"
        ) from error
    except RepositoryNotFoundError as error:
        raise UnknownModelError(
            f"Unknown model {repo_id!r}: it is not in the local Hugging Face cache ({cache_dir}) "
            f"and the Hugging Face Hub has no such repo (or it is private).{hint} "
            "Pass a local folder, a .gguf file, or a Hugging Face repo id."
        ) from error
    except CheckpointError:
        raise
    except _network_error_types() as error:
        raise HubUnreachableError(
            f"{unreachable} ({type(error).__name__}: {error}).{hint} {_OFFLINE_ADVICE}"
        ) from error


def from_hub(repo_id: str, revision: str | None, cache_dir: Path, hint: str = "") -> Path:
    """Fetch config, tokenizer and weights of ``repo_id`` from the Hub into the HF cache.

    ``hint`` (a sentence or empty) is added to the error raised when the Hub cannot help.
    """
    unreachable = (
        f"Model {repo_id!r} is not in the local Hugging Face cache ({cache_dir}) and the "
        "Hugging Face Hub could not be reached"
    )
    with _hub_errors(repo_id, revision, cache_dir, hint, unreachable):
        repo_files = _hub_repo_files(repo_id, revision)
        weights = _hub_weight_files(repo_id, revision, cache_dir, repo_files)
        patterns = [glob.escape(f) for f in (*CONFIG_AND_TOKENIZER_PATTERNS, *weights)]
        return _hub_download(repo_id, revision, cache_dir, patterns)


def hub_repo_files(repo_id: str, cache_dir: Path) -> list[str]:
    """The file names of ``repo_id`` (main revision) on the Hub.

    Raises:
        HubUnreachableError: The Hub could not be reached.
        UnknownModelError: The Hub has no such repo, or it is gated.
    """
    unreachable = (
        f"Cannot list the files of Hugging Face repo {repo_id!r}: the Hub could not be reached"
    )
    with _hub_errors(repo_id, None, cache_dir, "", unreachable):
        return _hub_repo_files(repo_id, None)


def hub_fetch_files(repo_id: str, cache_dir: Path, files: list[str]) -> Path:
    """Download ``files`` of ``repo_id`` (main revision), with its config and tokenizer, into
    the HF cache and return the snapshot folder."""
    unreachable = f"Cannot download {', '.join(files)} of {repo_id!r}: the Hub could not be reached"
    patterns = [glob.escape(f) for f in (*CONFIG_AND_TOKENIZER_PATTERNS, *files)]
    with _hub_errors(repo_id, None, cache_dir, "", unreachable):
        return _hub_download(repo_id, None, cache_dir, patterns)
