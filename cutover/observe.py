"""A move as it is right now, read from the servers and the ledger when asked.

The Prometheus exporter asks on every scrape: nothing is cached between two
readings. A server that does not answer is reported down and the rest is read
all the same (the source's slot still shows the lag growing while the target
is away); the reading itself never fails because a server did.
"""

import logging
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from cutover import metrics, verify
from cutover.engines import engine_for, prove_applied
from cutover.errors import CannotCompare, CutoverError, StepFailed
from cutover.ledger import Journal, journal_for, last_verification
from cutover.pg import catalog
from cutover.pg.connect import DatabaseError, Pool, pool
from cutover.phases import switch
from cutover.plan import Plan

log = logging.getLogger(__name__)
T = TypeVar("T")
SERVERS = ("source", "target")


class Observer:
    """Reads one move; holds its own connections, reopened after a server comes back.

    One reading at a time (a lock): two scrapes at once would share the connections.
    """

    def __init__(self, plan: Plan) -> None:
        self._plan = plan
        self._pool = Pool({"source": plan.source, "target": plan.target})
        self._lock = threading.Lock()

    def snapshot(self) -> metrics.Snapshot:
        """Everything a scrape reports, read now."""
        with self._lock:
            began = time.monotonic()
            up = {label: self._pool.is_up(label) for label in SERVERS}
            replication = [self._replication(db, up) for db in self._plan.databases]
            try:
                journal = journal_for(self._plan)
                verified = last_verification(self._plan)
            except CutoverError as exc:  # a ledger that cannot be read: the servers still can
                log.warning("%s", exc.message)
                return metrics.Snapshot(up, replication, seconds=time.monotonic() - began)
            return metrics.Snapshot(
                servers=up,
                replication=replication,
                steps=steps(journal),
                pauses=pauses(journal),
                rollbacks=rollbacks(journal),
                verifications=[
                    metrics.Verification(db, verified["mode"], int(n))
                    for db, n in verified["mismatches"].items()
                ]
                if verified
                else [],
                seconds=time.monotonic() - began,
            )

    def _replication(self, db: str, up: dict[str, bool]) -> metrics.Replication:
        engine = engine_for(self._plan, self._pool)
        source, target = up["source"], up["target"]
        slot = self._read(db, lambda: engine.lag(db)) if source else None
        subscribed = bool(target and self._read(db, lambda: engine.initial_sync_started(db)))
        streaming = subscribed and bool(self._read(db, lambda: engine.streaming(db)))
        moving = subscribed or slot is not None  # copying, or replicating
        progress = (
            self._read(db, lambda: engine.progress(db)) if source and target and moving else None
        )
        return metrics.Replication(
            database=db,
            engine=self._plan.engine.value,
            lag_bytes=slot.bytes if slot else None,
            lag_seconds=slot.seconds if slot else None,
            wal_retained_bytes=slot.retained_bytes if slot else None,
            wal_safe_bytes=slot.safe_bytes if slot else None,
            slot_active=slot.connected if slot else None,
            streaming=bool(streaming and slot and slot.connected) if subscribed else None,
            tables=progress.by_state if progress else None,
            copy_bytes_done=progress.bytes_done if progress else None,
            copy_bytes_total=progress.bytes_total if progress else None,
            rows_target=self._rows("target", db) if target and moving else None,
            rows_source=self._rows("source", db) if source and moving else None,
        )

    def _rows(self, label: str, db: str) -> int | None:
        return self._read(db, lambda: catalog.estimated_rows(self._pool.get(label, db)))

    def _read(self, db: str, read: Callable[[], T]) -> T | None:
        """One reading; a server or database that fails it leaves a gap, not a failed scrape."""
        try:
            return read()
        except (DatabaseError, CutoverError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)
            log.warning("reading the move's database %s failed: %s", db, reason)
            for label in SERVERS:  # the next reading opens fresh connections
                self._pool.discard(label)
            return None


def compare(
    plan: Plan,
    *,
    mode: verify.Mode,
    tables: list[tuple[str, str]] | None,
    jobs: int,
    max_keys: int,
    on_table: Callable[[verify.TableResult], None] = lambda _: None,
) -> verify.Report:
    """`cutover verify`: every database of the plan, each at a consistent point."""
    report = verify.Report(mode)
    began = time.monotonic()
    with pool({"source": plan.source, "target": plan.target}) as connections:
        for db in plan.databases:
            verify.verify_database(
                plan.source,
                plan.target,
                db,
                mode=mode,
                tables=tables,
                settle=consistent_point(plan, connections, db),
                jobs=jobs,
                max_keys=max_keys,
                report=report,
                on_table=on_table,
            )
    report.seconds = time.monotonic() - began
    return report


def consistent_point(plan: Plan, pool: Pool, db: str) -> verify.Settle:
    """How verify waits until the target holds what the source committed.

    While the move replicates: a barrier row written on the source after its
    snapshot, applied on the target before the target's snapshot. Without a
    subscription (before start, after the switch) both sides are read as they are.
    """
    engine = engine_for(plan, pool)
    if not engine.initial_sync_started(db):
        return lambda: verify.NOTHING_RUNS
    timeout = max(30.0, plan.thresholds.switch_timeout)

    def settle() -> str:
        try:
            markers = prove_applied(
                engine,
                [db],
                timeout=timeout,
                hint="replication is slow or stopped (`cutover status`); verify once it "
                "streams again, or after the switch",
            )
        except StepFailed as exc:
            raise CannotCompare(
                f"{exc.message}, so no point exists where both sides can be compared",
                hint=exc.hint,
            ) from None
        return f"barrier at {markers[db].position} applied by the target"

    return settle


def steps(journal: Journal) -> list[metrics.StepSample]:
    """Every step record, with its phase and scope."""
    samples = []
    for record in journal.steps().values():
        scope, phase = record.scope, record.phase
        if scope is None or phase is None:  # written before records named them
            rest, _, _ = record.key.rpartition(".")
            scope, _, phase = rest.rpartition("/")
        samples.append(
            metrics.StepSample(
                scope=scope,
                phase=phase,
                step=record.key.rpartition(".")[2],
                seconds=record.seconds,
                started_at=record.started_at,
            )
        )
    return samples


def pauses(journal: Journal) -> dict[str, tuple[float, float]]:
    """The last switch's and rollback's write pause, and their fence-to-promote time."""
    found = {}
    for phase in ("switch", "rollback"):
        pause = journal.pause(phase=phase, scope=switch.SCOPE)
        if pause is not None:
            found[phase] = (pause.writes_paused, pause.fence_to_promote)
    return found


def rollbacks(journal: Journal) -> dict[str, int]:
    """How often each kind of phase rolled itself back."""
    counts: dict[str, int] = {}
    for event in journal.events():
        if event.kind == "rollback" and event.outcome:
            family = metrics.phase_family(event.outcome)
            counts[family] = counts.get(family, 0) + 1
    return counts
