"""A move's metrics, as values: what one scrape reports, named and shaped.

The exporter (`cutover.metrics.exporter`, the only importer of prometheus_client)
turns a `Snapshot` into metric families at scrape time; the rest of cutover
uses these values without loading the Prometheus client.
"""

from dataclasses import dataclass, field

from cutover.types import TableState

PHASES = ("prepare", "backfill", "start", "switch", "rollback", "cleanup")


@dataclass(frozen=True)
class Replication:
    """One database's replication as the servers show it; None where a server did not answer."""

    database: str
    engine: str
    lag_bytes: int | None = None
    lag_seconds: float | None = None
    wal_retained_bytes: int | None = None
    wal_safe_bytes: int | None = None  # left before max_slot_wal_keep_size invalidates the slot
    slot_active: bool | None = None
    apply_errors: int | None = None  # a counter the target keeps (pg_stat_subscription_stats)
    schema_drift: int | None = None  # differences of the moved tables between the sides
    apply_stopped: bool | None = None  # the apply worker is stopped by a failure now
    streaming: bool | None = None  # None: no subscription (yet, or any more)
    tables: dict[TableState, int] | None = None  # tables by sync state
    copy_bytes_done: int | None = None
    copy_bytes_total: int | None = None
    rows_target: int | None = None
    rows_source: int | None = None
    # A managed service's own figures (Cloud Monitoring), and how old their sample is.
    monitored_lag_seconds: float | None = None
    monitored_lag_bytes: int | None = None
    monitored_lag_age_seconds: float | None = None
    service_state: str | None = None  # a DMS job's state (RUNNING, ...), and its phase (CDC, ...)
    service_phase: str | None = None


@dataclass(frozen=True)
class StepSample:
    """One step of the ledger: where it ran, and how long its last run took."""

    scope: str
    phase: str
    step: str
    seconds: float | None
    started_at: str


@dataclass(frozen=True)
class Verification:
    """The last verification of one database: rows that differ (or tables, by count)."""

    database: str
    mode: str
    mismatches: int


@dataclass(frozen=True)
class Snapshot:
    """Everything one scrape reports of a move."""

    servers: dict[str, bool]  # server -> answered
    replication: list[Replication] = field(default_factory=list)
    steps: list[StepSample] = field(default_factory=list)
    phase: str | None = None  # the phase of the step run last
    pauses: dict[str, tuple[float, float]] = field(default_factory=dict)  # phase -> pause, fence
    rollbacks: dict[str, int] = field(default_factory=dict)  # phase -> count
    verifications: list[Verification] = field(default_factory=list)
    seconds: float = 0.0  # how long reading took


def phase_family(name: str) -> str:
    """A phase's kind: a backfill's phase is named after its table."""
    return name.split(" ", 1)[0]
