"""A move's state right now: the one reading of the servers and the ledger.

`read` is what `cutover status` shows and what the Prometheus exporter
exports (cutover/observe.py maps it to metric values). It reads everything
anew; a server that does not answer, or a reading that fails, leaves a gap
(None) and a line in `problems`, and the rest is read all the same: the
source's slot still shows the lag growing while the target is away. Reading
never fails because a server did. Every fact the replication engine reports
comes from one function, `_replication`.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from cutover import database, metrics
from cutover.database import DatabaseError, Pool
from cutover.engines import engine_for
from cutover.engines.base import Engine
from cutover.errors import CutoverError
from cutover.ledger import Journal, Pause, StepRecord, last_verification
from cutover.log import redact
from cutover.plan import Plan
from cutover.steps import SWITCH_SCOPE, SwitchStep
from cutover.types import Lag, MonitoredLag, ServiceState, Side, SyncProgress

log = logging.getLogger(__name__)
T = TypeVar("T")
PAUSED_PHASES = ("switch", "rollback")  # the phases that stop the writers


@dataclass(frozen=True)
class Replication:
    """What the plan's engine reports of one database; None where it was not read."""

    subscribed: bool | None = None  # the target subscribes for this move
    streaming: bool | None = None  # the subscription is enabled (None: no subscription)
    slot_exists: bool | None = None  # the move's slot on the source
    lag: Lag | None = None  # the slot's: None when there is none, or it was not read
    progress: SyncProgress | None = None  # each table's state, bytes copied
    description: str | None = None  # the engine's own words, when it has any
    apply_errors: int | None = None  # the apply worker's failures since the subscription began
    apply_stopped: bool | None = None  # the apply worker is stopped by a failure right now
    monitored: MonitoredLag | None = None  # the service's own figures (DMS), minutes old
    service: ServiceState | None = None  # the service's own state (a DMS job's)

    @property
    def replicating(self) -> bool:
        """The target subscribes: the copy is done or runs under the subscription."""
        return self.subscribed is True

    @property
    def copying(self) -> bool:
        """The slot exists and no subscription yet: the initial copy runs (or was cut short)."""
        return self.subscribed is False and self.slot_exists is True

    @property
    def moving(self) -> bool:
        """Copying or replicating, as far as the servers that answered show."""
        return self.replicating or self.slot_exists is True

    @property
    def slot_at_risk(self) -> bool:
        """The source is about to give up the slot (max_slot_wal_keep_size), or did."""
        lag = self.lag
        if lag is None:
            return False
        return (
            lag.lost
            or lag.retention == "unreserved"
            or (lag.safe_bytes is not None and lag.safe_bytes < (lag.retained_bytes or 0))
        )


@dataclass(frozen=True)
class Views:
    """Materialized views populated on the source, and those of them not yet on the target."""

    populated_on_source: tuple[str, ...]
    unpopulated_on_target: tuple[str, ...]


@dataclass(frozen=True)
class DatabaseState:
    """One database of the move."""

    name: str
    target_exists: bool | None
    replication: Replication
    views: Views | None
    rows_source: int | None  # from statistics, while the move copies or replicates
    rows_target: int | None
    switched: bool  # the switch promoted the target and this database replicates no more
    # How the moved tables differ between the sides while replicating (None: not read).
    drift: tuple[str, ...] | None = None


@dataclass(frozen=True)
class StepState:
    """One step's record, with the scope, phase and step its key names."""

    scope: str
    phase: str
    step: str
    record: StepRecord


@dataclass(frozen=True)
class Verification:
    """The last `cutover verify` of the whole plan."""

    at: str
    mode: str
    mismatches: dict[str, int]  # database -> rows that differ (tables, in count mode)


@dataclass(frozen=True)
class LedgerState:
    """What the ledger holds of the move."""

    where: str
    steps: tuple[StepState, ...]  # by start time
    interrupted: tuple[str, ...]  # steps left running: a runner died during them
    switched: bool  # the switch's promote is done
    pauses: dict[str, Pause]  # switch, rollback -> its last write pause
    rollbacks: dict[str, int]  # phase -> how often it rolled itself back
    verification: Verification | None

    @property
    def phase(self) -> str | None:
        """The phase the move is in: the one of the step run last."""
        latest = max(self.steps, key=lambda s: s.record.started_at, default=None)
        return metrics.phase_family(latest.phase) if latest else None


@dataclass(frozen=True)
class MoveState:
    """A move as the servers and the ledger show it at one moment."""

    move: str
    engine: str
    servers: dict[Side, bool]  # answered
    databases: dict[str, DatabaseState]
    fenced_roles: tuple[str, ...] | None  # roles the move fenced on the source
    ledger: LedgerState | None  # None: the ledger could not be opened
    problems: tuple[str, ...]  # what could not be read, and why
    measured_at: float  # seconds since the epoch
    seconds: float  # how long reading took


class _Reading:
    """The readings of one moment; one that fails leaves a gap and a problem."""

    def __init__(self, pool: Pool, *, strict: bool = False) -> None:
        self.pool = pool
        self.strict = strict  # a reading acted upon: one that fails raises
        self.problems: list[str] = []

    def attempt(self, read: Callable[[], T]) -> T | None:
        """`read()`, or None if a server failed it; the next reading opens fresh connections."""
        try:
            return read()
        except (DatabaseError, CutoverError) as exc:
            if self.strict:
                raise
            self.failed(exc)
            for side in Side:
                self.pool.discard(side)
            return None

    def failed(self, exc: Exception) -> None:
        """Keep why a reading failed."""
        if isinstance(exc, CutoverError):
            reason = exc.message
        else:
            text = str(exc).strip()
            reason = redact(text.splitlines()[0] if text else repr(exc))
        log.warning("reading the move failed: %s", reason)
        self.problems.append(reason)


def read(plan: Plan, pool: Pool, journal: Journal | None) -> MoveState:
    """The move now: each server, each database's replication, the ledger (None: unreadable)."""
    began, measured_at = time.monotonic(), time.time()
    reading = _Reading(pool)
    servers = {side: _answers(reading, side) for side in Side}
    ledger = None if journal is None else _ledger(plan, journal, reading)
    fenced = (
        reading.attempt(lambda: tuple(database.fenced_roles(plan, pool)))
        if servers[Side.SOURCE]
        else None
    )
    switched = ledger is not None and ledger.switched
    engine = engine_for(plan, pool)  # one for the move: a DMS job serves every database
    with engine.reading():
        databases = {
            db: _database(engine, reading, db, servers, switched=switched) for db in plan.databases
        }
    return MoveState(
        move=plan.move,
        engine=plan.engine.value,
        servers=servers,
        databases=databases,
        fenced_roles=fenced,
        ledger=ledger,
        problems=tuple(reading.problems),
        measured_at=measured_at,
        seconds=time.monotonic() - began,
    )


def _answers(reading: _Reading, side: Side) -> bool:
    """Whether the server answers now; a connection it broke is closed and opened anew."""
    return reading.attempt(lambda: database.answers(reading.pool, side)) is not None


def _database(
    engine: Engine, reading: _Reading, db: str, servers: dict[Side, bool], *, switched: bool
) -> DatabaseState:
    pool = reading.pool
    source = servers[Side.SOURCE]
    target_exists = (
        reading.attempt(lambda: database.exists(pool, Side.TARGET, db))
        if servers[Side.TARGET]
        else None
    )
    facts = _replication(engine, reading, db, source=source, target_exists=target_exists)

    def rows(side: Side) -> int | None:
        return reading.attempt(lambda: database.estimated_rows(pool, side, db))

    return DatabaseState(
        name=db,
        target_exists=target_exists,
        replication=facts,
        views=reading.attempt(lambda: _views(pool, db, target_exists))
        if source and target_exists is not None
        else None,
        rows_source=rows(Side.SOURCE) if source and facts.moving else None,
        rows_target=rows(Side.TARGET) if target_exists and facts.moving else None,
        switched=switched and not facts.replicating,
        drift=reading.attempt(lambda: _drift(pool, db, facts))
        if source and facts.replicating and facts.progress is not None
        else None,
    )


def _drift(pool: Pool, db: str, facts: Replication) -> tuple[str, ...]:
    """Schema drift, once the copy is done (during it, tables are not all carried yet)."""
    progress = facts.progress
    carried = set(progress.tables) if progress and progress.done else None
    return tuple(d.describe() for d in database.schema_drift(pool, db, carried=carried))


def replication(engine: Engine, pool: Pool, db: str) -> Replication:
    """One database's replication, read now as status reads it; a reading that fails raises.

    The switch decides on this reading (is the copy done, is the lag low).
    """
    reading = _Reading(pool, strict=True)
    exists = database.exists(pool, Side.TARGET, db)
    return _replication(engine, reading, db, source=True, target_exists=exists)


def _replication(
    engine: Engine, reading: _Reading, db: str, *, source: bool, target_exists: bool | None
) -> Replication:
    """Every fact the plan's engine reports of one database: the one place that asks it.

    Only servers that answered are asked (the target only when the database
    exists there); a fact not read is None.
    """
    # No slot is a fact (None); a failed reading leaves slot_exists unknown (found is None).
    found = reading.attempt(lambda: (engine.lag(db),)) if source else None
    lag = found[0] if found else None
    if target_exists:
        subscribed = reading.attempt(lambda: engine.initial_sync_started(db))
    else:
        subscribed = None if target_exists is None else False
    streaming = reading.attempt(lambda: engine.streaming(db)) if subscribed else None
    moving = bool(subscribed) or lag is not None
    both = source and bool(target_exists) and moving
    return Replication(
        subscribed=subscribed,
        streaming=streaming,
        slot_exists=None if found is None else lag is not None,
        lag=lag,
        progress=reading.attempt(lambda: engine.progress(db)) if both else None,
        description=reading.attempt(lambda: engine.describe(db))
        if target_exists and moving
        else None,
        apply_errors=reading.attempt(lambda: engine.apply_errors(db)) if subscribed else None,
        apply_stopped=reading.attempt(lambda: engine.apply_stopped(db)) if subscribed else None,
        monitored=reading.attempt(lambda: engine.monitored_lag(db)) if subscribed else None,
        service=reading.attempt(lambda: engine.service_state(db)) if moving else None,
    )


def _views(pool: Pool, db: str, target_exists: bool) -> Views:
    populated, unpopulated = database.views_on_both_sides(pool, db, target_exists=target_exists)
    return Views(populated, unpopulated)


def _ledger(plan: Plan, journal: Journal, reading: _Reading) -> LedgerState:
    try:
        saved = last_verification(plan)
    except CutoverError as exc:  # its own document: the steps may still be read
        reading.failed(exc)
        saved = None
    return LedgerState(
        where=journal.where,
        steps=tuple(sorted(map(step_state, journal.steps().values()), key=_started)),
        interrupted=tuple(r.key for r in journal.running()),
        switched=journal.is_done(f"{SWITCH_SCOPE}/switch.{SwitchStep.PROMOTE}"),
        pauses={
            phase: pause
            for phase in PAUSED_PHASES
            if (pause := journal.pause(phase=phase, scope=SWITCH_SCOPE)) is not None
        },
        rollbacks=_rollbacks(journal),
        verification=Verification(saved["at"], saved["mode"], dict(saved["mismatches"]))
        if saved
        else None,
    )


def _started(step: StepState) -> str:
    return step.record.started_at


def step_state(record: StepRecord) -> StepState:
    """A record with its scope and phase; read from its key when an older version left them out."""
    rest, _, name = record.key.rpartition(".")
    scope, phase = record.scope, record.phase
    if scope is None or phase is None:
        scope, _, phase = rest.rpartition("/")
    return StepState(scope=scope, phase=phase, step=name, record=record)


def _rollbacks(journal: Journal) -> dict[str, int]:
    """How often each kind of phase rolled itself back."""
    counts: dict[str, int] = {}
    for event in journal.events():
        if event.kind == "rollback" and event.outcome:
            family = metrics.phase_family(event.outcome)
            counts[family] = counts.get(family, 0) + 1
    return counts
