"""What every replication engine offers the phases, and the values it reports."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from cutover.pg.replication import SlotState
from cutover.steps import Change

READY_STATES = frozenset({"ready"})


@dataclass(frozen=True)
class CopyProgress:
    """Where the initial copy stands: each table's state, and bytes copied of the total."""

    tables: dict[str, str]
    bytes_total: int
    bytes_done: int

    @property
    def ready(self) -> int:
        """Tables fully copied and streaming."""
        return sum(1 for state in self.tables.values() if state in READY_STATES)

    @property
    def done(self) -> bool:
        """Every table is copied and streaming."""
        return bool(self.tables) and self.ready == len(self.tables)


class Engine(Protocol):
    """One database's replication from source to target."""

    def replication_role_ready(self) -> bool: ...

    def create_replication_role(self, *, dry_run: bool) -> Sequence[Change]: ...

    def publication_exists(self) -> bool: ...

    def create_publication(self, *, dry_run: bool) -> Sequence[Change]: ...

    def subscription_exists(self) -> bool: ...

    def create_subscription(self, *, dry_run: bool) -> Sequence[Change]: ...

    def progress(self) -> CopyProgress: ...

    def slot(self) -> SlotState | None: ...

    def ready_to_switch(self) -> bool: ...

    def prepare_switch(self, *, dry_run: bool) -> Sequence[Change]: ...

    def write_barrier(self, token: str) -> str: ...

    def barrier_reached(self, token: str, lsn: str) -> bool: ...

    def is_promoted(self) -> bool: ...

    def promote(self, *, dry_run: bool) -> Sequence[Change]: ...
