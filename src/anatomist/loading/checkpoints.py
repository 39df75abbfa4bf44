"""Training checkpoints: `checkpoint_index` / `checkpoint_value` -> the weights to load.

Checkpoints are published in two ways.

- As revisions of the model's own repo: Pythia (``step{N}``, 154 checkpoints: steps 0, 1, 2,
  4, ..., 512, then every 1000 up to 143000; the older ``-v0`` models only the 143 steps from
  1000) and Stanford CRFM's GPT-2s (``checkpoint-{N}``, 609 checkpoints: every 10 steps to 100,
  every 50 to 2000, every 100 to 20000, every 1000 to 400000). The schedules are fixed, so no
  file listing is needed.
- As files inside the repo (the field's toy models: attn-only, GELU and SoLU): one classic state
  dict per checkpoint, ``checkpoints/<anything>_<N>.pth``, next to the final model. ``N`` is the
  training step, or the number of tokens seen; like the classic library we read it as tokens
  when the largest label exceeds 10^9 (:func:`label_type`). The list comes from the repo's
  files: a local folder's ``checkpoints/``, the local Hugging Face cache snapshot, or, only when
  online, the Hub's file listing.

`checkpoint_index` counts from 0 in the list sorted by label (negative values count from the
end); `checkpoint_value` is the label itself. The classic library took the order of the Hub's
listing, which need not be numeric (by name, ``_1000`` comes before ``_200``), and matched a
value by the end of the file name (so 100 could pick ``_1100.pth``); here both are numeric and
exact.
"""

from __future__ import annotations

import bisect
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from anatomist.loading.errors import UnknownModelError


@dataclass(frozen=True)
class CheckpointSchedule:
    repo_prefixes: tuple[str, ...]  # repo ids starting with these follow the schedule
    steps: tuple[int, ...]
    revision_format: str  # e.g. "step{}"
    repo_contains: str = ""  # and, if set, contain this (lower case)

    def matches(self, repo_id: str) -> bool:
        lowered = repo_id.lower()
        return lowered.startswith(self.repo_prefixes) and self.repo_contains in lowered


PYTHIA = CheckpointSchedule(
    ("eleutherai/pythia",),
    tuple([0] + [2**i for i in range(10)] + list(range(1000, 143001, 1000))),
    "step{}",
)
# The first Pythia release (renamed "-v0" when the models were retrained in April 2023) has no
# log-spaced early checkpoints.
PYTHIA_V0 = CheckpointSchedule(
    ("eleutherai/pythia",), tuple(range(1000, 143001, 1000)), "step{}", repo_contains="-v0"
)
STANFORD_CRFM = CheckpointSchedule(
    ("stanford-crfm/",),
    tuple(
        list(range(0, 100, 10))
        + list(range(100, 2000, 50))
        + list(range(2000, 20000, 100))
        + list(range(20000, 400001, 1000))
    ),
    "checkpoint-{}",
)
SCHEDULES = (PYTHIA_V0, PYTHIA, STANFORD_CRFM)  # first match wins

#: A checkpoint published as a file: ``checkpoints/<anything>_<label>.pth`` (the classic toy
#: models), or ``.safetensors`` (what `anatomist.train` writes).
CHECKPOINT_FILE = re.compile(r"checkpoints/[^/]*_(\d+)\.(?:pth|safetensors)")
CHECKPOINT_FOLDER = "checkpoints"
#: Labels above this are token counts, not steps (the classic library's rule).
TOKEN_LABEL_THRESHOLD = 10**9

_NO_CHECKPOINTS_KNOWN = (
    "Pythia and stanford-crfm publish them as revisions, the classic toy models (attn-only, "
    "GELU, SoLU) as checkpoints/*_<N>.pth files; pass revision=... for another Hugging Face "
    "revision"
)


def select_label(
    labels: Sequence[int], index: int | None, value: int | None, owner: str, unit: str = "step"
) -> tuple[int, int]:
    """``(position, label)`` of the checkpoint asked for by `index` or `value` in the sorted
    `labels`; `owner` names whose checkpoints they are in error messages."""
    if (index is None) == (value is None):
        raise ValueError("Pass exactly one of checkpoint_index and checkpoint_value.")
    count = len(labels)
    if index is not None:
        if not -count <= index < count:
            raise ValueError(
                f"checkpoint_index {index} is out of range: {owner} has {count} checkpoints "
                f"(0..{count - 1}, or -{count}..-1 counting from the end)."
            )
        return index % count, labels[index]
    assert value is not None
    at = bisect.bisect_left(labels, value)
    if at < count and labels[at] == value:
        return at, labels[at]
    near = labels[max(0, at - 1) : at + 1]
    raise ValueError(
        f"{owner} has no checkpoint at {unit} {value}; nearest: {', '.join(map(str, near))}."
    )


def checkpoint_revision(
    repo_id: str, checkpoint_index: int | None = None, checkpoint_value: int | None = None
) -> str:
    """The revision holding the requested training checkpoint of `repo_id`."""
    if checkpoint_index is not None and checkpoint_value is not None:
        raise ValueError("Pass checkpoint_index or checkpoint_value, not both.")
    schedule = next((s for s in SCHEDULES if s.matches(repo_id)), None)
    if schedule is None:
        raise ValueError(
            f"{repo_id!r} publishes no training checkpoints as revisions anatomist knows of "
            f"({_NO_CHECKPOINTS_KNOWN})."
        )
    _, step = select_label(schedule.steps, checkpoint_index, checkpoint_value, repo_id)
    return schedule.revision_format.format(step)


# ---------------------------------------------------------------------------------------------
# Checkpoints published as files


@dataclass(frozen=True)
class FileCheckpoint:
    label: int  # step or token count
    filename: str  # path inside the repo, "checkpoints/..._<label>.pth"


def file_checkpoints(repo_files: Iterable[str]) -> tuple[FileCheckpoint, ...]:
    """The training checkpoints among a repo's file names, sorted by label.

    Raises:
        UnknownModelError: Two files carry the same label, so a label cannot pick one.
    """
    found: dict[int, str] = {}
    for name in repo_files:
        match = CHECKPOINT_FILE.fullmatch(name.replace(os.sep, "/"))
        if match is None:
            continue
        label = int(match.group(1))
        if label in found and found[label] != name:
            raise UnknownModelError(
                f"Two checkpoint files carry the label {label}: {found[label]} and {name}; "
                "remove one."
            )
        found[label] = name
    return tuple(FileCheckpoint(label, found[label]) for label in sorted(found))


def label_type(labels: Sequence[int]) -> str:
    """``"token"`` when the labels count tokens seen, else ``"step"``."""
    return "token" if labels and max(labels) > TOKEN_LABEL_THRESHOLD else "step"


def _folder_checkpoint_names(folder: Path) -> list[str]:
    """``checkpoints/<file>`` for every readable file in ``folder/checkpoints``."""
    sub = folder / CHECKPOINT_FOLDER
    if not sub.is_dir():
        return []
    return [f"{CHECKPOINT_FOLDER}/{p.name}" for p in sub.iterdir() if p.is_file()]


@dataclass(frozen=True)
class TrainingCheckpoint:
    """The training checkpoint to load, and where its weights are.

    Exactly one of `revision` (a revision of the model's repo) and `weights` (a ``.pth`` file;
    `folder` then holds the model's config.json and tokenizer) is set.
    """

    index: int  # position in the sorted list, from 0
    value: int  # the label: step or token count
    label_type: str  # "step" or "token"
    name: str  # the repo id, or the folder as given
    revision: str | None = None
    folder: Path | None = None
    weights: Path | None = None


def training_checkpoint(
    name_or_path: str | os.PathLike[str],
    checkpoint_index: int | None,
    checkpoint_value: int | None,
    local_files_only: bool | None = None,
) -> TrainingCheckpoint:
    """Find the training checkpoint `checkpoint_index` or `checkpoint_value` of a model.

    `name_or_path` is a local folder (its ``checkpoints/`` subfolder is listed), a registry name
    or alias, or a Hugging Face repo id. Repos on a revision schedule (Pythia, stanford-crfm)
    answer with a revision; the others with a file: from the local Hugging Face cache when it
    holds the one asked for, else, unless offline (``local_files_only=True``, ``HF_HUB_OFFLINE``
    or ``TRANSFORMERS_OFFLINE``), listed and downloaded from the Hub. An index needs the whole
    list, so it is counted in the Hub's listing when online; offline it counts the checkpoints in
    the cache, with a warning that the Hub may hold more.

    Raises:
        ValueError: Both or neither of index and value, an index out of range, a value with no
            checkpoint (the nearest are named), or a model that publishes no checkpoints.
        UnknownModelError: The model or the checkpoint file is not available offline (the
            message says what to download), or the Hub cannot be reached.
    """
    if (checkpoint_index is None) == (checkpoint_value is None):
        raise ValueError("Pass exactly one of checkpoint_index and checkpoint_value.")
    for argument, number in (
        ("checkpoint_index", checkpoint_index),
        ("checkpoint_value", checkpoint_value),
    ):
        if number is not None and (isinstance(number, bool) or not isinstance(number, int)):
            raise TypeError(f"{argument} must be an int, got {number!r}.")
    given = os.fspath(name_or_path)
    local = Path(os.path.expanduser(given.strip()))
    if _is_local(name_or_path, given, local):
        return _from_folder(local, given, checkpoint_index, checkpoint_value)

    repo_id = _repo_id(given.strip())
    schedule = next((s for s in SCHEDULES if s.matches(repo_id)), None)
    if schedule is not None:
        index, step = select_label(schedule.steps, checkpoint_index, checkpoint_value, repo_id)
        return TrainingCheckpoint(
            index, step, "step", repo_id, revision=schedule.revision_format.format(step)
        )
    return _from_repo(repo_id, checkpoint_index, checkpoint_value, local_files_only)


def _is_local(name_or_path: str | os.PathLike[str], text: str, local: Path) -> bool:
    from anatomist.loading.resolve import _looks_like_path

    if isinstance(name_or_path, os.PathLike) or _looks_like_path(text.strip()):
        if not local.exists():
            raise UnknownModelError(
                f"Path {text!r} does not exist (looked for {str(local.absolute())!r})."
            )
        return True
    return local.is_dir() and (local / "config.json").is_file()


def _repo_id(name: str) -> str:
    """The repo id of a registry name or alias, or `name` itself when shaped like a repo id.

    Raises:
        ValueError: A known model whose architecture is not the classic checkpoint format, and
            which is on no revision schedule: it publishes no training checkpoints.
    """
    from anatomist.loading.resolve import (
        _looks_like_repo_id,
        _lookup,
        _packaged_model,
        _registry,
        canonical_name,
    )

    canonical = _lookup(name)
    if canonical is None:
        if _looks_like_repo_id(name):
            return name
        canonical_name(name)  # raises, naming the closest known names
    assert canonical is not None
    entry = _registry().entries.get(canonical)
    packaged = _packaged_model(canonical)
    on_schedule = any(s.matches(canonical) for s in SCHEDULES)
    if entry is not None:
        architecture = entry.architecture
    else:
        architecture = packaged.architecture if packaged is not None else None
    if not on_schedule and architecture not in (None, "legacy-lens-checkpoint"):
        raise ValueError(
            f"{canonical!r} publishes no training checkpoints anatomist knows of "
            f"({_NO_CHECKPOINTS_KNOWN})."
        )
    return canonical


def _from_folder(
    folder: Path, given: str, index: int | None, value: int | None
) -> TrainingCheckpoint:
    if not folder.is_dir():
        raise UnknownModelError(
            f"{given!r} is a file; training checkpoints load from a model folder holding "
            f"config.json and a {CHECKPOINT_FOLDER}/ folder of *_<N>.pth or .safetensors files."
        )
    checkpoints = file_checkpoints(_folder_checkpoint_names(folder))
    if not checkpoints:
        raise ValueError(
            f"Folder {given!r} publishes no training checkpoints: it has no "
            f"{CHECKPOINT_FOLDER}/<name>_<N>.pth or .safetensors files."
        )
    return _pick(checkpoints, index, value, given, f"Folder {given!r}", folder)


def _pick(
    checkpoints: Sequence[FileCheckpoint],
    index: int | None,
    value: int | None,
    name: str,
    owner: str,
    folder: Path,
) -> TrainingCheckpoint:
    labels = [c.label for c in checkpoints]
    kind = label_type(labels)
    position, label = select_label(labels, index, value, owner, kind)
    return TrainingCheckpoint(
        position,
        label,
        kind,
        name,
        folder=folder,
        weights=folder / checkpoints[position].filename,
    )


def _cached_snapshot(repo_id: str, cache_dir: Path) -> Path | None:
    """The cached snapshot folder of `repo_id` (main revision) holding its config.json."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache_dir)
    except ValueError:  # a malformed repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def _download_command(repo_id: str, pattern: str) -> str:
    return f'`hf download {repo_id} --include "config.json" "{pattern}"`'


def _from_repo(
    repo_id: str, index: int | None, value: int | None, local_files_only: bool | None
) -> TrainingCheckpoint:
    from anatomist.loading.hub import (
        HubUnreachableError,
        env_offline,
        hf_cache_dir,
        hub_repo_files,
    )

    cache_dir = hf_cache_dir()
    snapshot = _cached_snapshot(repo_id, cache_dir)
    cached = file_checkpoints(_folder_checkpoint_names(snapshot)) if snapshot else ()
    in_cache = f"the local Hugging Face cache ({cache_dir})"
    if snapshot is not None and value is not None and any(c.label == value for c in cached):
        return _pick(cached, None, value, repo_id, f"{repo_id} in {in_cache}", snapshot)

    if bool(local_files_only) or env_offline():
        reason = "local_files_only=True" if local_files_only else "HF_HUB_OFFLINE is set"
        no_hub = f"the Hub is not consulted because {reason}"
    else:
        try:
            listing = file_checkpoints(hub_repo_files(repo_id, cache_dir))
        except HubUnreachableError as error:
            if snapshot is None or not cached:
                raise
            no_hub = f"the Hub could not be reached ({error.__cause__ or error})"
        else:
            return _from_listing(repo_id, listing, index, value, snapshot, cache_dir)

    # Offline, or the Hub unreachable: only what the cache holds.
    everything = _download_command(repo_id, f"{CHECKPOINT_FOLDER}/*.pth")
    if snapshot is None:
        raise UnknownModelError(
            f"Model {repo_id!r} is not in {in_cache} and {no_hub}, so its training checkpoints "
            f"cannot be loaded. Download its config and checkpoints on a machine with network "
            f"access, e.g. {everything}, or point HF_HUB_CACHE/HF_HOME at a cache that holds them."
        )
    if value is not None:
        near = ""
        if cached:
            labels = [c.label for c in cached]
            at = bisect.bisect_left(labels, value)
            shown = ", ".join(map(str, labels[max(0, at - 1) : at + 1]))
            near = f" The cache holds {len(cached)} of its checkpoints; nearest: {shown}."
        raise UnknownModelError(
            f"The checkpoint at {label_type([value])} {value} of {repo_id!r} is not in "
            f"{in_cache} and {no_hub}.{near} Download it on a machine with network access: "
            f"{_download_command(repo_id, f'{CHECKPOINT_FOLDER}/*_{value}.pth')}."
        )
    if not cached:
        raise UnknownModelError(
            f"{in_cache} holds no training checkpoints of {repo_id!r} "
            f"({CHECKPOINT_FOLDER}/*_<N>.pth files) and {no_hub}. Download them on a machine "
            f"with network access: {everything}."
        )
    picked = _pick(cached, index, None, repo_id, f"{repo_id} in {in_cache}", snapshot)
    warnings.warn(
        f"checkpoint_index {index} of {repo_id} counts the {len(cached)} checkpoints in "
        f"{in_cache}, since {no_hub}; the Hub may hold more, and there this index may mean "
        f"another checkpoint. Loading the one at {picked.label_type} {picked.value}; pass "
        "checkpoint_value to be exact.",
        stacklevel=5,
    )
    return picked


def _from_listing(
    repo_id: str,
    listing: Sequence[FileCheckpoint],
    index: int | None,
    value: int | None,
    snapshot: Path | None,
    cache_dir: Path,
) -> TrainingCheckpoint:
    """Pick from the Hub's listing; download the file unless the cache already holds it."""
    from anatomist.loading.hub import hub_fetch_files

    if not listing:
        raise ValueError(
            f"{repo_id!r} publishes no training checkpoints: its files on the Hugging Face Hub "
            f"include no {CHECKPOINT_FOLDER}/<name>_<N>.pth ({_NO_CHECKPOINTS_KNOWN})."
        )
    labels = [c.label for c in listing]
    kind = label_type(labels)
    position, label = select_label(labels, index, value, repo_id, kind)
    filename = listing[position].filename
    if snapshot is not None and (snapshot / filename).is_file():
        folder = snapshot
    else:
        folder = hub_fetch_files(repo_id, cache_dir, [filename])
    return TrainingCheckpoint(
        position, label, kind, repo_id, folder=folder, weights=folder / filename
    )


__all__ = [
    "CHECKPOINT_FILE",
    "PYTHIA",
    "PYTHIA_V0",
    "SCHEDULES",
    "STANFORD_CRFM",
    "CheckpointSchedule",
    "FileCheckpoint",
    "TrainingCheckpoint",
    "checkpoint_revision",
    "file_checkpoints",
    "label_type",
    "select_label",
    "training_checkpoint",
]
