"""The application's writers, stopped and started in tiers (http, command, pgbouncer,
kubernetes)."""

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

from cutover.plan import Writer as WriterSpec
from cutover.steps import Change


class Writer(Protocol):
    """One writer of the application."""

    name: str

    def stop(self, *, dry_run: bool) -> Sequence[Change]: ...

    def start(self, *, dry_run: bool) -> Sequence[Change]: ...

    def is_drained(self) -> bool: ...

    def draining(self) -> str:
        """What the writer still waits for, after is_drained said no ("" if it cannot say)."""
        ...

    def is_healthy(self) -> tuple[bool, str]:
        """Whether the writer writes successfully, and why not (redacted); True, "" unprobed."""
        ...


@runtime_checkable
class Checked(Protocol):
    """A writer that can tell, reading only, what would stop it working in a switch."""

    name: str

    def problems(self) -> list[str]: ...


class Records(Protocol):
    """Where a writer keeps its state from before a stop, durably, until it starts again."""

    def get(self, writer: str) -> dict[str, Any] | None: ...

    def put(self, writer: str, record: dict[str, Any]) -> None: ...


def writer_for(spec: WriterSpec, *, records: Records) -> Writer:
    """The writer a plan entry describes (`records`: see cutover.ledger.WriterRecords)."""
    if spec.kubernetes is not None:
        from cutover.writers.kubernetes import KubernetesWriter

        return KubernetesWriter(spec.name, spec.kubernetes, records=records)
    if spec.http is not None:
        from cutover.writers.http import HttpWriter

        return HttpWriter(spec.name, spec.http)
    if spec.pgbouncer is not None:
        from cutover.writers.pgbouncer import PgBouncerWriter

        return PgBouncerWriter(spec.name, spec.pgbouncer)
    assert spec.command is not None  # the plan allows exactly one kind
    from cutover.writers.command import CommandWriter

    return CommandWriter(spec.name, spec.command)
