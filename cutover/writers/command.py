"""A writer driven by commands: stop, start, a status command that exits 0 once drained,
and a health command that exits 0 while the writer writes successfully.

Each command runs in a process group of its own, ended whole when it outlasts the
writer's timeout (cutover/process.py): nothing it started acts after the step moved on."""

import os
import subprocess
from collections.abc import Sequence

from cutover import process
from cutover.errors import StepFailed
from cutover.plan import CommandWriter as CommandSpec
from cutover.steps import Change


class CommandWriter:
    """Stops and starts a writer by running commands (argv, no shell)."""

    def __init__(self, name: str, spec: CommandSpec) -> None:
        self.name = name
        self._spec = spec

    def _run(self, argv: list[str], *, what: str) -> subprocess.CompletedProcess[str]:
        return process.run(
            argv,
            timeout=self._spec.timeout,
            env={
                **os.environ,
                **process.secret_env(self._spec.env, where=f"writers[{self.name}].command.env"),
                "CUTOVER_WRITER": self.name,
            },
            what=f"writer {self.name}: the {what} command",
            hint="check the command in the plan and that it finishes within its timeout",
        )

    def _control(self, argv: list[str], *, what: str, dry_run: bool) -> Sequence[Change]:
        change = Change(f"writer {self.name}", process.shown(argv))
        if dry_run:
            return [change]
        result = self._run(argv, what=what)
        if result.returncode != 0:
            raise StepFailed(
                f"writer {self.name}: the {what} command exited {result.returncode}: "
                + process.tail(result),
                hint="run the command by hand to see why",
            )
        return [change]

    def stop(self, *, dry_run: bool) -> Sequence[Change]:
        """Run the stop command."""
        return self._control(self._spec.stop, what="stop", dry_run=dry_run)

    def start(self, *, dry_run: bool) -> Sequence[Change]:
        """Run the start command."""
        return self._control(self._spec.start, what="start", dry_run=dry_run)

    def is_drained(self) -> bool:
        """The status command exits 0 (without one: as soon as stop succeeded)."""
        if self._spec.status is None:
            return True
        return self._run(self._spec.status, what="status").returncode == 0

    def problems(self) -> list[str]:
        """Each command whose program cannot be found."""
        spec = self._spec
        commands = {
            "stop": spec.stop,
            "start": spec.start,
            "status": spec.status,
            "health": spec.health,
        }
        return process.not_found(commands, who=f"writer {self.name}")

    def draining(self) -> str:
        """Nothing more to say than is_drained."""
        return ""

    def is_healthy(self) -> tuple[bool, str]:
        """Run the health command: exit 0 is healthy; otherwise its code and its output's end."""
        if self._spec.health is None:
            return True, ""
        try:
            result = self._run(self._spec.health, what="health")
        except StepFailed as exc:  # it did not run, or not in time: unhealthy, not an error
            return False, exc.message.removeprefix(f"writer {self.name}: ")
        if result.returncode == 0:
            return True, ""
        tail = process.tail(result)
        return False, f"exit {result.returncode}" + (f": {tail}" if tail else "")
