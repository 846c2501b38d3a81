"""Where the applications' connection strings live, and how they are pointed at the target."""

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from cutover.plan import Repoint as RepointSpec
from cutover.plan import Server
from cutover.steps import Change


class Repoint(Protocol):
    """One place that holds a connection string."""

    name: str

    def point_to(self, server: Server, *, dry_run: bool) -> Sequence[Change]: ...

    def points_to(self, server: Server) -> bool: ...


@runtime_checkable
class Checked(Protocol):
    """A repoint that can tell, reading only, what would stop it pointing at `target`."""

    name: str

    def problems(self, target: Server) -> list[str]: ...


@runtime_checkable
class KeepsPrevious(Protocol):
    """A repoint that keeps the value it replaced beside it, for a rollback."""

    name: str

    def forget_previous(self, *, dry_run: bool) -> Sequence[Change]: ...

    def previous_forgotten(self) -> bool: ...


def repoint_for(spec: RepointSpec, databases: list[str]) -> Repoint:
    """The repoint target a plan entry describes."""
    if spec.kubernetes is not None:
        from cutover.repoint.kubernetes import KubernetesRepoint

        return KubernetesRepoint(spec.name, spec.kubernetes)
    if spec.file is not None:
        from cutover.repoint.file import FileRepoint

        return FileRepoint(spec.name, spec.file)
    if spec.pgbouncer is not None:
        from cutover.repoint.pgbouncer import PgBouncerRepoint

        return PgBouncerRepoint(spec.name, spec.pgbouncer)
    assert spec.command is not None  # the plan allows exactly one kind
    from cutover.repoint.command import CommandRepoint

    return CommandRepoint(spec.name, spec.command, databases)
