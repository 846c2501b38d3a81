"""The exporter's reading of a move: `state.read` on every scrape, as metric values.

Nothing is cached between two scrapes. A server that does not answer is
reported down and the rest is read all the same (see cutover/state.py); the
reading itself never fails because a server or the ledger did.
"""

import logging
import threading

from cutover import metrics, state
from cutover.database import Pool
from cutover.errors import CutoverError
from cutover.ledger import Journal, journal_for
from cutover.plan import Plan
from cutover.types import Side

log = logging.getLogger(__name__)


class Observer:
    """Reads one move; holds its own connections, reopened after a server comes back.

    One reading at a time (a lock): two scrapes at once would share the connections.
    """

    def __init__(self, plan: Plan) -> None:
        self._plan = plan
        self._pool = Pool({Side.SOURCE: plan.source, Side.TARGET: plan.target})
        self._lock = threading.Lock()

    def snapshot(self) -> metrics.Snapshot:
        """Everything a scrape reports, read now."""
        with self._lock:
            journal: Journal | None
            try:
                journal = journal_for(self._plan)
            except CutoverError as exc:  # a ledger that cannot be read: the servers still can
                log.warning("%s", exc.message)
                journal = None
            return snapshot(state.read(self._plan, self._pool, journal))


def snapshot(move: state.MoveState) -> metrics.Snapshot:
    """A move's state as the metrics module names its values."""
    ledger = move.ledger
    verification = ledger.verification if ledger else None
    return metrics.Snapshot(
        servers={side.value: up for side, up in move.servers.items()},
        replication=[_replication(move.engine, db) for db in move.databases.values()],
        steps=[
            metrics.StepSample(s.scope, s.phase, s.step, s.record.seconds, s.record.started_at)
            for s in (ledger.steps if ledger else ())
        ],
        phase=ledger.phase if ledger else None,
        pauses={
            phase: (pause.writes_paused, pause.fence_to_promote)
            for phase, pause in (ledger.pauses if ledger else {}).items()
        },
        rollbacks=dict(ledger.rollbacks) if ledger else {},
        verifications=[
            metrics.Verification(db, verification.mode, int(n))
            for db, n in verification.mismatches.items()
        ]
        if verification
        else [],
        seconds=move.seconds,
    )


def _replication(engine: str, db: state.DatabaseState) -> metrics.Replication:
    facts, lag, progress = db.replication, db.replication.lag, db.replication.progress
    monitored = facts.monitored
    return metrics.Replication(
        database=db.name,
        engine=engine,
        lag_bytes=lag.bytes if lag else None,
        lag_seconds=lag.seconds if lag else None,
        wal_retained_bytes=lag.retained_bytes if lag else None,
        wal_safe_bytes=lag.safe_bytes if lag else None,
        slot_active=lag.connected if lag else None,
        apply_errors=facts.apply_errors,
        apply_stopped=facts.apply_stopped,
        schema_drift=None if db.drift is None else len(db.drift),
        # The metric's "streaming": enabled, and its slot sends right now.
        streaming=bool(facts.streaming and lag and lag.connected) if facts.subscribed else None,
        tables=progress.by_state if progress else None,
        copy_bytes_done=progress.bytes_done if progress else None,
        copy_bytes_total=progress.bytes_total if progress else None,
        rows_target=db.rows_target,
        rows_source=db.rows_source,
        monitored_lag_seconds=monitored.seconds if monitored else None,
        monitored_lag_bytes=monitored.bytes if monitored else None,
        monitored_lag_age_seconds=monitored.age() if monitored else None,
        service_state=facts.service.state if facts.service else None,
        service_phase=facts.service.phase if facts.service else None,
    )
