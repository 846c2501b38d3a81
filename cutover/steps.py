"""The vocabulary of a move: a Phase is an ordered tuple of Steps.

A Step has a stable name (the ledger key is `phase.step`; a released name is
never changed), an `apply` that is safe to repeat, an optional `is_done` that
reads the real world (not the ledger), and, before the point of no return, an
`undo`. `apply` and `undo` take `dry_run` by keyword and return the Changes they
made, or would make: SQL text or API calls, for the operator to read.
This module imports nothing from cutover.
"""

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Protocol


@dataclass(frozen=True)
class Change:
    """One thing done to the world: where (a server, a writer) and what (SQL, a call)."""

    where: str
    action: str

    def from_other_side(self) -> "Change":
        """The same change, its place named for the move the other way round.

        The fallback and the rollback run on the reversed move, whose source is
        the target: what they did on their `source/db` happened on `target/db`.
        """
        side, sep, rest = self.where.partition("/")
        other = {"source": "target", "target": "source"}.get(side)
        return self if other is None else Change(other + sep + rest, self.action)


class Action(Protocol):
    """Something that changes the world, or with dry_run says how it would."""

    def __call__(self, *, dry_run: bool) -> Sequence[Change]: ...


Probe = Callable[[], bool]


@dataclass(frozen=True)
class Step:
    """One named, idempotent unit of work."""

    name: str
    apply: Action
    is_done: Probe | None = None
    undo: Action | None = None
    point_of_no_return: bool = False
    attempts: int = 3


@dataclass(frozen=True)
class Phase:
    """An ordered tuple of steps, run by the runner, read like a runbook."""

    name: str
    steps: tuple[Step, ...]
    undo_on_failure: bool = False
    # Called when a step is interrupted (Ctrl-C, SIGTERM), before the undo: the step's
    # connections may hold a query, or a cancel, that would fail the undo's first statement.
    after_interrupt: Callable[[], None] | None = None

    def key(self, step: Step, scope: str) -> str:
        """Ledger key of a step: `scope/phase.step` (scope is the database)."""
        return f"{scope}/{self.name}.{step.name}"


def from_other_side(step: Step) -> Step:
    """A step of the reversed move whose changes name their places as the plan does."""

    def flipped(action: Action) -> Action:
        def act(*, dry_run: bool) -> Sequence[Change]:
            return [c.from_other_side() for c in action(dry_run=dry_run)]

        return act

    undo = step.undo
    return replace(step, apply=flipped(step.apply), undo=None if undo is None else flipped(undo))


SWITCH_SCOPE = "all"  # the ledger scope of the switch and rollback: every database at once


class SwitchStep(StrEnum):
    """The switch's steps (rollback's too, where they are the same): each a ledger key's end."""

    CHECK_READY = "check_ready"
    COPY_SEQUENCES_AHEAD = "copy_sequences_ahead"
    STOP_WRITERS = "stop_writers"
    FENCE_SOURCE = "fence_source"
    WAIT_FOR_BARRIER = "wait_for_barrier"
    COPY_SEQUENCES = "copy_sequences"
    COPY_LARGE_OBJECTS = "copy_large_objects"
    VERIFY_COUNTS = "verify_counts"
    PROMOTE = "promote"
    RELEASE_SOURCE = "release_source"
    START_FALLBACK = "start_fallback"
    REPOINT = "repoint"
    START_WRITERS = "start_writers"
    # Terraform's with a terraform section, else Cloud SQL Admin's (a dms section)
    ENABLE_TARGET_BACKUPS = "enable_target_backups"
    BACK_UP_TARGET = "back_up_target"  # a dms section: asked for once the writers are back
    WAIT_FOR_TARGET_BACKUP = "wait_for_target_backup"  # ... and waited for last
    CHECK_WRITERS = "check_writers"
    REFRESH_MATERIALIZED_VIEWS = "refresh_materialized_views"
    # rollback's own
    CHECK_FALLBACK = "check_fallback"
    FENCE_TARGET = "fence_target"
    UNFENCE_SOURCE = "unfence_source"


class StepStatus(StrEnum):
    """What the runner did with a step, as the ledger records it."""

    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    UNDONE = "undone"


class Outcome(StrEnum):
    """How a step ended in one run."""

    SKIPPED = "skipped"  # the ledger and the world agree it is done
    ADOPTED = "adopted"  # the world shows it done, the ledger did not know yet
    APPLIED = "applied"
    PLANNED = "planned"  # dry run: would apply
    FAILED = "failed"
    UNDONE = "undone"
