"""Errors raised while finding and reading checkpoints."""

from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file is damaged, truncated, or not in a format anatomist can read."""


class UnknownModelError(ValueError):
    """A model name or path could not be resolved to checkpoint files."""
