"""The one error tree of cutover.

Every error carries a message and a hint that tells the operator what to do next.
`cli.py` is the only place that catches `CutoverError`: it prints `FAILED: ...`
(or the error's label: `WARNING: ...`) and `hint: ...` and exits with the error's
code. Anything else is a bug and keeps its traceback. This module imports nothing
from cutover.
"""


class CutoverError(Exception):
    """Base of every error a user can cause or fix."""

    exit_code = 1
    label = "FAILED"  # how the CLI introduces the message

    def __init__(self, message: str, *, hint: str) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(CutoverError):
    """The command line or the plan is wrong; nothing was touched."""

    exit_code = 2


class PlanError(UsageError):
    """The plan file cannot be read or does not validate."""


class ConnectionFailed(CutoverError):
    """A server could not be reached or refused us; nothing was changed."""

    exit_code = 2


class LedgerLocked(CutoverError):
    """Another runner holds the move's lock."""

    exit_code = 2


class PreconditionFailed(CutoverError):
    """The world is not ready for this step; nothing was changed. Fix and run again."""


class ApprovalNeeded(PreconditionFailed):
    """A change was planned and shown, and waits for the operator's approval (`--yes`).

    Nothing was changed; the command exits 4, so that a script can tell it from a failure.
    """

    exit_code = 4
    label = "PLANNED"


class CannotCompare(CutoverError):
    """Verification could not reach a point where source and target are comparable."""

    exit_code = 2


class Retryable(CutoverError):
    """A passing condition (a lock wait, a busy server): the runner tries the step again."""

    def __init__(self, message: str, *, hint: str, delay: float = 1.0) -> None:
        super().__init__(message, hint=hint)
        self.delay = delay


class StepFailed(CutoverError):
    """A step raised: the runner recorded it and stopped. Running the command again resumes."""


class SwitchedWithWarning(CutoverError):
    """Past the point of no return, a check found something wrong.

    Nothing is undone (the data is on the target): the step is recorded failed and
    the command exits 3.
    """

    exit_code = 3
    label = "WARNING"


class WritersUnhealthy(SwitchedWithWarning):
    """Writers started after the point of no return do not report healthy.

    Running the command again checks the writers again.
    """


class CountsDiffer(SwitchedWithWarning):
    """Row counts at the barrier's moment differ between source and target.

    Found after the writers are back on the target: `cutover verify` shows which rows.
    """


class TargetBackupFailed(SwitchedWithWarning):
    """The new primary's backup, asked for after the writers were back, failed or is late.

    Running the command again takes it anew (or waits for it again).
    """


class Interrupted(CutoverError):
    """Ctrl-C or SIGTERM stopped a command; what could be undone was undone."""

    exit_code = 130
