"""Files that appear whole or not at all: written under a temporary name beside the target,
flushed to disk, then renamed over it (a rename within a folder is atomic). Used for what a
killed run must never leave half-written: harvest manifests, training checkpoints."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    """`write(temporary)` writes the content; then it is fsynced and renamed to `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{os.getpid()}")
    write(temporary)
    fsync(temporary)
    os.replace(temporary, path)


def write_json_atomically(path: Path, value: Any) -> None:
    """`value` as indented JSON (anything else as its ``str``), written atomically."""
    text = json.dumps(value, indent=2, default=str) + "\n"
    write_atomically(path, lambda target: target.write_text(text))


def fsync(path: Path) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
