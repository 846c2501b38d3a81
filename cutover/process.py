"""Operators' commands (writers, health probes, repoint, a restart) run as child processes.

Each command runs in a session of its own, so its process group holds whatever
it starts in turn. When it outlasts its timeout the whole group is ended,
SIGTERM first and SIGKILL after a short grace: a child left behind in the
background could otherwise act after cutover has moved on (a writer's stop
that lands after the rollback started the writers again). A process that
leaves the group itself (setsid, a daemon) is beyond reach, as it is for a shell.

What is shown of a command line is masked (`shown`): the plan gives secrets to
a command through its `env` map of references, never on its command line.
"""

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence

from cutover.errors import StepFailed
from cutover.log import MASK, redact, register_secret
from cutover.plan import resolve_secret

GRACE_SECONDS = 2.0  # between SIGTERM and SIGKILL to the command's process group
_POLL_SECONDS = 0.05
# Options whose value is a secret: --password x, --api-key=x, -token x ...
_SECRET_OPTION = re.compile(
    r"^(-{1,2}(?!no-)[\w-]*(?:passw(?:or)?d|secret|token|api[-_]?key|credentials?)[\w-]*)"
    r"(=.*)?$",
    re.IGNORECASE,
)


def shown(argv: Sequence[str]) -> str:
    """A command line for the operator's eyes: secret options' values and passwords masked."""
    words: list[str] = []
    hide_next = False
    for word in argv:
        if hide_next:
            words.append(MASK)
            hide_next = False
            continue
        option = _SECRET_OPTION.match(word)
        if option and option.group(2) is not None:
            words.append(f"{option.group(1)}={MASK}")
        else:
            hide_next = option is not None
            words.append(word)
    return redact(" ".join(words))


def not_found(commands: Mapping[str, Sequence[str] | None], *, who: str) -> list[str]:
    """Each of `commands` (by what it does) whose program is not on PATH or not executable."""
    return [
        f"{who}: the {what} command's program {argv[0]!r} is not found or not executable"
        for what, argv in commands.items()
        if argv is not None and shutil.which(argv[0]) is None
    ]


def secret_env(refs: Mapping[str, str], *, where: str) -> dict[str, str]:
    """A command's `env` map from the plan, each reference resolved; every value is masked
    wherever cutover shows text from now on (the command's own output included)."""
    values = {name: resolve_secret(ref, where=f"{where}.{name}") for name, ref in refs.items()}
    for value in values.values():
        register_secret(value)
    return values


def run(
    argv: Sequence[str],
    *,
    timeout: float,
    env: Mapping[str, str] | None = None,
    what: str,
    hint: str,
) -> subprocess.CompletedProcess[str]:
    """Run a command to its end; one that outlasts `timeout` has its process group ended.

    Raises StepFailed, its command line masked, when the command cannot start or does
    not finish in time. Its output is for `tail`: the caller decides what an exit code means.
    """
    try:
        process = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=None if env is None else dict(env),
            start_new_session=True,
        )
    except OSError as exc:
        raise StepFailed(
            f"{what}: {shown(argv[:1])} could not start: {exc.strerror or exc}", hint=hint
        ) from None
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        end_group(process)
        raise StepFailed(
            f"{what}: {shown(argv)} did not finish within {timeout:g} s; "
            "it was ended with everything it started",
            hint=hint,
        ) from None
    except BaseException:  # Ctrl-C or SIGTERM to cutover: the command must not outlive it
        end_group(process)
        raise
    return subprocess.CompletedProcess(list(argv), process.returncode, stdout, stderr)


def end_group(process: "subprocess.Popen[str]") -> None:
    """SIGTERM to the command's process group; SIGKILL to what is left after the grace."""
    _signal_group(process.pid, signal.SIGTERM)
    deadline = time.monotonic() + GRACE_SECONDS
    while _group_alive(process) and time.monotonic() < deadline:
        time.sleep(_POLL_SECONDS)
    _signal_group(process.pid, signal.SIGKILL)
    try:
        process.communicate(timeout=GRACE_SECONDS)
    except subprocess.TimeoutExpired:  # one that left the group holds the pipes: let it
        process.kill()
        for pipe in (process.stdout, process.stderr):
            if pipe is not None:
                pipe.close()
        process.wait()


def tail(result: subprocess.CompletedProcess[str]) -> str:
    """The end of what a command said (stderr, else stdout), secrets masked."""
    return redact((result.stderr or result.stdout).strip()[-300:])


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    # The command leads its own session: its pid is its process group's id.
    with contextlib.suppress(ProcessLookupError, PermissionError):  # none left we may signal
        os.killpg(pgid, signum)


def _group_alive(process: "subprocess.Popen[str]") -> bool:
    process.poll()  # reap the leader once it exits, or it counts as a member forever
    try:
        os.killpg(process.pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member runs as another user: still there
        return True
    return True
