"""Repoint by running a command, told the target's address in its environment.

The command runs in a process group of its own, ended whole when it outlasts
its timeout (cutover/process.py)."""

import os
from collections.abc import Sequence

from cutover import process
from cutover.errors import StepFailed
from cutover.plan import CommandRepoint as CommandSpec
from cutover.plan import Server
from cutover.steps import Change


class CommandRepoint:
    """A command that points the applications at the target (CUTOVER_TARGET_HOST, ...)."""

    def __init__(self, name: str, spec: CommandSpec, databases: list[str]) -> None:
        self.name = name
        self._spec = spec
        self._databases = databases

    def problems(self, target: Server) -> list[str]:
        """The command's program, if it cannot be found."""
        return process.not_found({"repoint": self._spec.run}, who=f"repoint {self.name}")

    def points_to(self, server: Server) -> bool:
        """A command leaves nothing to observe: the ledger decides."""
        return False

    def point_to(self, server: Server, *, dry_run: bool) -> Sequence[Change]:
        """Run the command once."""
        change = Change(f"repoint {self.name}", process.shown(self._spec.run))
        if dry_run:
            return [change]
        env = {
            **os.environ,
            **process.secret_env(self._spec.env, where=f"repoint[{self.name}].command.env"),
            "CUTOVER_TARGET_HOST": server.peer_host,
            "CUTOVER_TARGET_PORT": str(server.port),
            "CUTOVER_DATABASES": ",".join(self._databases),
        }
        result = process.run(
            self._spec.run,
            timeout=self._spec.timeout,
            env=env,
            what=f"repoint {self.name}: the command",
            hint="check repoint[].command.run in the plan and that it finishes within its timeout",
        )
        if result.returncode != 0:
            raise StepFailed(
                f"repoint {self.name}: the command exited {result.returncode}: "
                + process.tail(result),
                hint="run it by hand to see why; the writers are still stopped",
            )
        return [change]
