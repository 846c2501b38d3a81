"""The values that cross layers: which side, which table, how a table and the lag stand.

Every layer speaks these, so this module imports nothing from cutover.
"""

import time
from collections import Counter
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NamedTuple


class Side(StrEnum):
    """One of the move's two servers."""

    SOURCE = "source"
    TARGET = "target"

    @property
    def other(self) -> "Side":
        """The other server."""
        return Side.TARGET if self is Side.SOURCE else Side.SOURCE


def quoted(name: str) -> str:
    """An identifier as SQL spells it: always quoted, inner quotes doubled."""
    return '"' + name.replace('"', '""') + '"'


class TableName(NamedTuple):
    """A table (or view, or sequence) by schema and name, both unquoted."""

    schema: str
    name: str

    def __str__(self) -> str:
        return f"{quoted(self.schema)}.{quoted(self.name)}"


class TableState(StrEnum):
    """Where one table's initial copy stands, in every engine's words."""

    QUEUED = "queued"
    COPYING = "copying"
    COPIED = "copied"  # copied, not yet streaming (or streaming: the native copy ends here)
    CATCHING_UP = "catching_up"  # copied by its own worker, applying what came meanwhile
    SYNCING = "syncing"
    READY = "ready"
    UNKNOWN = "unknown"

    @property
    def label(self) -> str:
        """The state as status prints it."""
        return self.value.replace("_", " ")

    @property
    def is_ready(self) -> bool:
        """Copied whole: the table needs nothing but streamed changes."""
        return self in (TableState.COPIED, TableState.READY)


@dataclass(frozen=True)
class SyncProgress:
    """Where the initial copy stands: each table's state, and bytes copied of the total."""

    tables: dict[str, TableState]
    bytes_total: int
    bytes_done: int
    measured_at: float = field(default_factory=time.time)  # seconds since the epoch

    @property
    def ready(self) -> int:
        """Tables fully copied (and, once subscribed, streaming)."""
        return sum(1 for state in self.tables.values() if state.is_ready)

    @property
    def done(self) -> bool:
        """Every table is ready."""
        return bool(self.tables) and self.ready == len(self.tables)

    @property
    def by_state(self) -> dict[TableState, int]:
        """How many tables are in each state."""
        return dict(Counter(self.tables.values()))


@dataclass(frozen=True)
class Lag:
    """How far the target is behind the source, as the engine measured it."""

    bytes: int  # source's current WAL position minus what the target confirmed
    seconds: float | None  # since the last confirmed commit, when the engine knows
    connected: bool  # the target receives changes right now
    retained_bytes: int | None = None  # WAL the source keeps for the target
    safe_bytes: int | None = None  # WAL left before the source gives up on the target
    retention: str = ""  # how the source keeps WAL for it: reserved, extended, unreserved, lost
    measured_at: float = field(default_factory=time.time)  # seconds since the epoch

    @property
    def lost(self) -> bool:
        """The source gave up: the WAL it kept for the target is gone."""
        return self.retention == "lost"


@dataclass(frozen=True)
class ServiceState:
    """Where a managed service's own replication stands (a DMS job's state and phase)."""

    state: str
    phase: str | None = None


@dataclass(frozen=True)
class MonitoredLag:
    """A managed service's own lag figures (Cloud Monitoring's): a sample, minutes old.

    Shown beside the exact lag, never used to decide: the switch proves zero lag
    with its barrier.
    """

    seconds: float | None
    bytes: int | None
    sampled_at: float  # the end of the sample's interval, seconds since the epoch

    def age(self, now: float | None = None) -> float:
        """Seconds since the sample's interval ended."""
        return max(0.0, (time.time() if now is None else now) - self.sampled_at)
