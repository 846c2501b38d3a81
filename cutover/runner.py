"""The one loop that runs a phase: observe, skip or adopt, apply, record, undo.

For each step the runner asks the world first (`is_done`), so a step that a
killed controller finished but never recorded is adopted, not repeated. It
alone writes the ledger: `running` before a step, `done` or `failed` after.
A passing error (`Retryable`) is tried again; any other error is recorded and
stops the phase; a phase that undoes on failure undoes its done steps in
reverse, unless a point of no return was passed. With dry_run nothing is
written anywhere: each step that is not done reports the changes it would make.
"""

import logging
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

from tenacity import RetryCallState, Retrying, retry_if_exception_type, stop_after_attempt

from cutover.database import translate
from cutover.errors import (
    ApprovalNeeded,
    CutoverError,
    Interrupted,
    PreconditionFailed,
    Retryable,
    StepFailed,
    SwitchedWithWarning,
    UsageError,
)
from cutover.ledger import Journal, Pause, store_for
from cutover.log import MoveAdapter, for_move, redact
from cutover.plan import Plan
from cutover.steps import Change, Outcome, Phase, Step, StepStatus

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepReport:
    """What happened to one step in one run."""

    key: str
    outcome: Outcome
    seconds: float
    changes: tuple[Change, ...] = ()
    error: str | None = None


@contextmanager
def locked(plan: Plan) -> Iterator[Journal]:
    """Hold the move's lock for the length of a command; yields its journal."""
    store = store_for(plan)
    with store.lock():
        journal = Journal(store, move=plan.move)
        try:
            yield journal
        except BaseException:
            try:
                journal.close()
            except Exception as exc:  # the command's own error is the one to tell
                log.warning("%s: not written at the command's end: %s", journal.where, exc)
            raise
        journal.close()  # the log folded into the document, so that it alone says all


FAILPOINT = "CUTOVER_FAILPOINT"


def _failpoint(key: str, moment: str) -> None:
    """Die here as a killed controller would, when the tests ask for it.

    `CUTOVER_FAILPOINT=<key>@applied` kills the process with SIGKILL after the
    step changed the world and before the ledger recorded it: the moment that
    a resumed run must adopt, not repeat.
    """
    if os.environ.get(FAILPOINT) == f"{key}@{moment}":
        os.kill(os.getpid(), signal.SIGKILL)


def _retry_delay(state: RetryCallState) -> float:
    error = state.outcome.exception() if state.outcome else None
    return error.delay if isinstance(error, Retryable) else 1.0


class Runner:
    """Runs phases against the world and records them in a journal."""

    def __init__(
        self,
        journal: Journal,
        *,
        move: str,
        dry_run: bool,
        on_step: Callable[[StepReport], None] = lambda _: None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._journal = journal
        self._move = move
        self._dry_run = dry_run
        self._on_step = on_step
        self._sleep = sleep
        self._clock = clock

    def run(self, phase: Phase, *, scope: str) -> list[StepReport]:
        """Run every step of `phase` for `scope` (a database), in order."""
        reports: list[StepReport] = []
        # Past a point of no return the world has moved on: the steps before it are never
        # probed or applied again (a sequence copied again would move the target's back).
        passed = [
            i
            for i, step in enumerate(phase.steps)
            if step.point_of_no_return and self._journal.is_done(phase.key(step, scope))
        ]
        settled = passed[-1] if passed else -1
        for index, step in enumerate(phase.steps):
            key = phase.key(step, scope)
            if index < settled and self._journal.is_done(key):
                report = StepReport(key, Outcome.SKIPPED, 0.0)
            else:
                report = self._run_step(phase, step, scope)
            reports.append(report)
            self._on_step(report)
        self._journal.flush(sync=phase.undo_on_failure)
        return reports

    def _run_step(self, phase: Phase, step: Step, scope: str) -> StepReport:
        key = phase.key(step, scope)
        logger = for_move(log, move=self._move, phase=phase.name, step=step.name)
        started = self._clock()
        try:
            return self._observe_and_apply(phase, step, scope, logger, started)
        except (Exception, KeyboardInterrupt) as raised:  # Ctrl-C or SIGTERM: roll back too
            seconds = self._clock() - started
            # A database error (in is_done, say) is the operator's to fix, not a bug.
            exc = translate(raised, step=key) or raised
            if isinstance(exc, KeyboardInterrupt):
                message = "interrupted (Ctrl-C or SIGTERM)"
            elif isinstance(exc, CutoverError):
                message = exc.message.removeprefix(f"{key}: ")  # named once, below
            else:
                message = f"{type(exc).__name__}: {exc}"
            if not self._dry_run:
                self._journal.failed(key, error=message, seconds=seconds)
            # A user error is printed once by the CLI; a bug is worth an error line of its own.
            level = logging.INFO if isinstance(exc, CutoverError) else logging.ERROR
            logger.log(level, "failed after %.0f ms: %s", seconds * 1000, redact(message))
            if isinstance(exc, KeyboardInterrupt) and phase.after_interrupt is not None:
                phase.after_interrupt()
            undo_note = (
                self._undo(phase, scope, failed=step)
                if phase.undo_on_failure and not self._dry_run
                else ""
            )
            if isinstance(exc, KeyboardInterrupt):
                raise Interrupted(
                    f"{key}: {message}{undo_note}",
                    hint="run the same command again to continue; `cutover status` shows where",
                ) from None
            if isinstance(exc, SwitchedWithWarning | ApprovalNeeded):  # exit codes of their own
                raise type(exc)(f"{key}: {message}{undo_note}", hint=exc.hint) from exc
            if isinstance(exc, CutoverError):
                raise StepFailed(f"{key}: {message}{undo_note}", hint=exc.hint) from exc
            raise  # a bug: keep its traceback

    def _observe_and_apply(
        self, phase: Phase, step: Step, scope: str, logger: MoveAdapter, started: float
    ) -> StepReport:
        key = phase.key(step, scope)
        where = {"phase": phase.name, "scope": scope}
        recorded = self._journal.is_done(key)
        if step.is_done is not None:
            if step.is_done():
                outcome = Outcome.SKIPPED if recorded else Outcome.ADOPTED
                if outcome is Outcome.ADOPTED and not self._dry_run:
                    seconds = self._clock() - started
                    self._journal.finished(
                        key,
                        outcome=outcome,
                        seconds=seconds,
                        phase=phase.name,
                        scope=scope,
                        durable=phase.undo_on_failure,
                    )
                logger.info("%s", outcome.value)
                return StepReport(key, outcome, self._clock() - started)
            if recorded:
                logger.warning("the ledger says done, the server says not: applying again")
        elif recorded:
            logger.info("%s", Outcome.SKIPPED.value)
            return StepReport(key, Outcome.SKIPPED, self._clock() - started)

        if self._dry_run:
            changes = tuple(step.apply(dry_run=True))
            return StepReport(key, Outcome.PLANNED, self._clock() - started, changes)

        # An undo walks what started: its record is on disk before the work begins.
        self._journal.started(key, durable=phase.undo_on_failure, **where)
        changes = tuple(self._apply(step, key))
        _failpoint(key, "applied")
        seconds = self._clock() - started
        # Written with the next step's start: a run lost in between is one killed right
        # after the work, which every step allows (see Journal.finished).
        self._journal.finished(key, outcome=Outcome.APPLIED, seconds=seconds, durable=False)
        logger.info("done in %.0f ms", seconds * 1000)
        return StepReport(key, Outcome.APPLIED, seconds, changes)

    def _apply(self, step: Step, key: str) -> Sequence[Change]:
        def attempt() -> Sequence[Change]:
            try:
                return step.apply(dry_run=False)
            except Exception as exc:
                # Translated here, so that a lock timeout (Retryable) is tried again.
                translated = translate(exc, step=key)
                if translated is None:
                    raise
                raise translated from exc

        retrying = Retrying(
            stop=stop_after_attempt(max(1, step.attempts)),
            wait=_retry_delay,
            retry=retry_if_exception_type(Retryable),
            sleep=self._sleep,
            reraise=True,
        )
        return retrying(attempt)

    def abandon(self, phase: Phase, scope: str) -> list[StepReport]:
        """Undo a run of `phase` that was interrupted before its point of no return.

        Each step it did, and the one it was in, is undone in reverse (undos are
        idempotent) and marked undone, so the next run starts from the first step.
        """
        touched = [
            step
            for step in phase.steps
            if (record := self._journal.get(phase.key(step, scope))) is not None
            and record.status in (StepStatus.DONE, StepStatus.RUNNING)
        ]
        if not touched:
            raise UsageError(
                f"no interrupted {phase.name} to abandon: none of its steps is done or running",
                hint="`cutover status` shows where the move stands",
            )
        passed = [s.name for s in touched if s.point_of_no_return]
        if passed:
            raise PreconditionFailed(
                f"the {phase.name} passed its point of no return ({', '.join(passed)}): "
                "the target is promoted and cannot be given back",
                hint=f"finish it: run `cutover {phase.name}` again",
            )
        reports: list[StepReport] = []
        for step in reversed(touched):
            key, started = phase.key(step, scope), self._clock()
            changes = tuple(step.undo(dry_run=self._dry_run)) if step.undo is not None else ()
            if not self._dry_run:
                self._journal.undone(key)
            outcome = Outcome.PLANNED if self._dry_run else Outcome.UNDONE
            reports.append(StepReport(key, outcome, self._clock() - started, changes))
            self._on_step(reports[-1])
        if not self._dry_run:
            self._journal.note(
                "rollback",
                key=phase.key(touched[-1], scope),
                outcome=phase.name,
                detail=f"{phase.name} abandoned after {touched[-1].name}",
            )
        return reports

    def _undo(self, phase: Phase, scope: str, *, failed: Step) -> str:
        """Roll the phase back: undo its done steps and the one that failed, in reverse.

        Every done step is marked undone, so the next run checks them all again.
        The failed step's undo runs too: it may have half happened (undos are idempotent).
        """
        done = [s for s in phase.steps if self._journal.is_done(phase.key(s, scope))]
        if any(s.point_of_no_return for s in [*done, failed]):
            return " (past the point of no return: nothing undone)"
        problems: list[str] = []
        for step in reversed([*done, failed]):
            key = phase.key(step, scope)
            if step.undo is not None:
                try:
                    step.undo(dry_run=False)
                except Exception as exc:  # keep undoing the rest: each undo is independent
                    translated = translate(exc)
                    problems.append(f"{key}: {translated.message if translated else exc}")
                    log.exception("%s: undo failed", key)
                    continue
            if step is not failed:
                self._journal.undone(key)
        self._journal.note(
            "rollback",
            key=phase.key(failed, scope),
            outcome=phase.name,
            detail=f"{phase.name} rolled back after {failed.name} failed"
            + (f"; undo incomplete: {len(problems)} steps" if problems else ""),
        )
        if problems:
            return "; undo incomplete: " + "; ".join(problems)
        return "; undone: the world is as before the phase"


def record_pause(journal: Journal, *, phase: str, scope: str) -> Pause | None:
    """Measure the last switch's pause from its step records, and note it in the audit trail."""
    pause = journal.pause(phase=phase, scope=scope)
    if pause is not None:
        journal.note(
            "write_pause",
            detail=f"writes paused {pause.writes_paused:.3f} s, "
            f"fence to promote {pause.fence_to_promote:.3f} s",
        )
    return pause
