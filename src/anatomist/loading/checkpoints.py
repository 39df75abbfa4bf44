"""Training checkpoints: `checkpoint_index` / `checkpoint_value` -> a Hugging Face revision.

Two model suites publish their training checkpoints as revisions of the same repo: Pythia
(``step{N}``, 154 checkpoints: steps 0, 1, 2, 4, ..., 512, then every 1000 up to 143000) and
Stanford CRFM's GPT-2s (``checkpoint-{N}``, 609 checkpoints: every 10 steps to 100, every 50 to
2000, every 100 to 20000, every 1000 to 400000). `checkpoint_index` counts from 0 in that list;
`checkpoint_value` is the step itself.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CheckpointSchedule:
    repo_prefixes: tuple[str, ...]  # repo ids starting with these follow the schedule
    steps: tuple[int, ...]
    revision_format: str  # e.g. "step{}"

    def matches(self, repo_id: str) -> bool:
        return repo_id.lower().startswith(self.repo_prefixes)


PYTHIA = CheckpointSchedule(
    ("eleutherai/pythia",),
    tuple([0] + [2**i for i in range(10)] + list(range(1000, 143001, 1000))),
    "step{}",
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
SCHEDULES = (PYTHIA, STANFORD_CRFM)


def checkpoint_revision(
    repo_id: str, checkpoint_index: int | None = None, checkpoint_value: int | None = None
) -> str:
    """The revision holding the requested training checkpoint of `repo_id`."""
    if checkpoint_index is not None and checkpoint_value is not None:
        raise ValueError("Pass checkpoint_index or checkpoint_value, not both.")
    schedule = next((s for s in SCHEDULES if s.matches(repo_id)), None)
    if schedule is None:
        raise ValueError(
            f"{repo_id!r} publishes no training checkpoints anatomist knows of (Pythia and "
            "stanford-crfm do); pass revision=... for another Hugging Face revision."
        )
    if checkpoint_index is not None:
        if not -len(schedule.steps) <= checkpoint_index < len(schedule.steps):
            raise ValueError(
                f"checkpoint_index {checkpoint_index} is out of range: {repo_id} has "
                f"{len(schedule.steps)} checkpoints (0..{len(schedule.steps) - 1})."
            )
        step = schedule.steps[checkpoint_index]
    else:
        if checkpoint_value not in schedule.steps:
            import bisect

            at = bisect.bisect_left(schedule.steps, checkpoint_value or 0)
            near = schedule.steps[max(0, at - 1) : at + 1]
            raise ValueError(
                f"{repo_id} has no checkpoint at step {checkpoint_value}; nearest: "
                f"{', '.join(map(str, near))}."
            )
        step = int(checkpoint_value)  # type: ignore[arg-type]
    return schedule.revision_format.format(step)
