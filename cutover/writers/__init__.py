"""The application's writers, stopped and started in tiers (http, command, pgbouncer)."""

from collections.abc import Sequence
from typing import Protocol

from cutover.plan import Writer as WriterSpec
from cutover.steps import Change


class Writer(Protocol):
    """One writer of the application."""

    name: str

    def stop(self, *, dry_run: bool) -> Sequence[Change]: ...

    def start(self, *, dry_run: bool) -> Sequence[Change]: ...

    def is_drained(self) -> bool: ...

    def busy(self) -> str:
        """What keeps it from draining, named for a drain timeout's message ("": unknown)."""
        ...

    def is_healthy(self) -> tuple[bool, str]:
        """Whether the writer writes successfully, and why not (redacted); True, "" unprobed."""
        ...


def writer_for(spec: WriterSpec) -> Writer:
    """The writer a plan entry describes."""
    if spec.http is not None:
        from cutover.writers.http import HttpWriter

        return HttpWriter(spec.name, spec.http)
    if spec.pgbouncer is not None:
        from cutover.writers.pgbouncer import PgBouncerWriter

        return PgBouncerWriter(spec.name, spec.pgbouncer)
    assert spec.command is not None  # the plan allows exactly one kind
    from cutover.writers.command import CommandWriter

    return CommandWriter(spec.name, spec.command)
