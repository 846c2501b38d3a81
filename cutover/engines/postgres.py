"""What the engines that replicate between plain PostgreSQL servers share.

Native logical replication and pglogical are built per database: each has a
`Replication` of one database, and `PerDatabase` answers the move-wide Engine
Protocol by asking the right one. The move's own role and the slot's lag are
the same for both.
"""

from collections.abc import Callable, Generator, Sequence
from contextlib import AbstractContextManager, closing, nullcontext
from typing import Protocol

from cutover.engines.base import Barrier, Traits
from cutover.pg import admin, replication
from cutover.pg.connect import Connection, Pool
from cutover.plan import Plan
from cutover.steps import Change
from cutover.types import Lag, MonitoredLag, ServiceState, SyncProgress, TableName


class Replication(Protocol):
    """One database's replication, the engine's own objects by their own names."""

    def installed(self) -> bool: ...
    def install(self, *, dry_run: bool) -> Sequence[Change]: ...
    def access_granted(self) -> bool: ...
    def grant_access(self, *, dry_run: bool) -> Sequence[Change]: ...
    def source_prepared(self) -> bool: ...
    def prepare_source(self, *, dry_run: bool) -> Sequence[Change]: ...
    def subscribed(self) -> bool: ...
    def subscribe_without_copy(self, *, dry_run: bool) -> Sequence[Change]: ...
    def initial_sync(
        self,
        *,
        jobs: int,
        deadline: float,
        on_progress: Callable[[SyncProgress], None],
        dry_run: bool,
    ) -> Sequence[Change]: ...
    def streaming(self) -> bool: ...
    def carry(self, tables: Sequence[TableName], *, dry_run: bool) -> Sequence[Change]: ...
    def resume_apply(self, *, dry_run: bool) -> Sequence[Change]: ...
    def stream(self, *, dry_run: bool) -> Sequence[Change]: ...
    def progress(self) -> SyncProgress: ...
    def slot(self) -> replication.SlotState | None: ...
    def apply_errors(self) -> int: ...
    def apply_stopped(self) -> bool: ...
    def describe(self) -> str | None: ...
    def heartbeat(self) -> None: ...
    def ready_to_switch(self) -> bool: ...
    def prepare_switch(self, *, dry_run: bool) -> Sequence[Change]: ...
    def write_barrier(self, token: str) -> Barrier: ...
    def barrier_reached(self, barrier: Barrier) -> bool: ...
    def halted(self) -> bool: ...
    def halt(self, *, dry_run: bool) -> Sequence[Change]: ...
    def stop(self, *, dry_run: bool) -> Sequence[Change]: ...
    def release_source(self, *, dry_run: bool) -> Sequence[Change]: ...
    def unprepare_source(self, *, dry_run: bool) -> Sequence[Change]: ...
    def uninstalled(self) -> bool: ...
    def uninstall(self, *, dry_run: bool) -> Sequence[Change]: ...


def lag_of(slot: replication.SlotState | None) -> Lag | None:
    """The slot's view of the lag, in the controller's words."""
    if slot is None:
        return None
    return Lag(
        bytes=slot.lag_bytes,
        seconds=slot.lag_seconds,
        connected=slot.active,
        retained_bytes=slot.retained_bytes,
        safe_bytes=slot.safe_wal_size,
        retention=slot.wal_status,
    )


class PerDatabase:
    """The Engine of a move whose replication is made database by database."""

    def __init__(
        self,
        kind: str,
        traits: Traits,
        plan: Plan,
        pool: Pool,
        build: Callable[[str], Replication],
    ) -> None:
        self.kind = kind
        self.traits = traits
        self._plan = plan
        self._pool = pool
        self._build = build
        self._databases: dict[str, Replication] = {}
        self._role = replication.object_name(plan.move)

    def reading(self) -> AbstractContextManager[None]:
        """Nothing to share: every fact is read on the servers."""
        return nullcontext()

    def _of(self, db: str) -> Replication:
        if db not in self._databases:
            self._databases[db] = self._build(db)
        return self._databases[db]

    def installed(self, db: str) -> bool:
        return self._of(db).installed()

    def install(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        return self._of(db).install(dry_run=dry_run)

    def access_granted(self, db: str) -> bool:
        return self._of(db).access_granted()

    def grant_access(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        return self._of(db).grant_access(dry_run=dry_run)

    def source_prepared(self, db: str) -> bool:
        return self._of(db).source_prepared()

    def prepare_source(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        return self._of(db).prepare_source(dry_run=dry_run)

    def initial_sync_started(self, db: str) -> bool:
        """The subscription exists: made after a copy of our own, or copying by itself."""
        return self._of(db).subscribed()

    def initial_sync(
        self,
        db: str,
        *,
        jobs: int,
        deadline: float,
        on_progress: Callable[[SyncProgress], None],
        dry_run: bool,
    ) -> Sequence[Change]:
        return self._of(db).initial_sync(
            jobs=jobs, deadline=deadline, on_progress=on_progress, dry_run=dry_run
        )

    def streaming(self, db: str) -> bool:
        return self._of(db).streaming()

    def carry(self, db: str, tables: Sequence[TableName], *, dry_run: bool) -> Sequence[Change]:
        return self._of(db).carry(tables, dry_run=dry_run)

    def resume_apply(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        return self._of(db).resume_apply(dry_run=dry_run)

    def stream(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        return self._of(db).stream(dry_run=dry_run)

    def progress(self, db: str) -> SyncProgress:
        return self._of(db).progress()

    def lag(self, db: str) -> Lag | None:
        return lag_of(self._of(db).slot())

    def source_decodes(self) -> bool:
        """Not asked: prepare sets wal_level itself (ALTER SYSTEM)."""
        return True

    def enable_decoding(self, *, restart: bool, dry_run: bool) -> Sequence[Change]:
        """Nothing: prepare sets wal_level itself (ALTER SYSTEM)."""
        return []

    def monitored_lag(self, db: str) -> MonitoredLag | None:
        """None: the slot's lag is the only one, and it is exact."""
        return None

    def service_state(self, db: str) -> ServiceState | None:
        """None: PostgreSQL replicates, no service."""
        return None

    def apply_errors(self, db: str) -> int:
        return self._of(db).apply_errors()

    def apply_stopped(self, db: str) -> bool:
        return self._of(db).apply_stopped()

    def describe(self, db: str) -> str | None:
        return self._of(db).describe()

    def heartbeat(self, db: str) -> None:
        self._of(db).heartbeat()

    def ready_to_switch(self, db: str) -> bool:
        return self._of(db).ready_to_switch()

    def prepare_switch(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        return self._of(db).prepare_switch(dry_run=dry_run)

    def write_barrier(self, db: str, token: str) -> Barrier:
        return self._of(db).write_barrier(token)

    def barrier_reached(self, db: str, barrier: Barrier) -> bool:
        return self._of(db).barrier_reached(barrier)

    def promoted(self, db: str) -> bool:
        return self._of(db).halted()

    def promote(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """Stop applying, at once; the subscription's and the slot's removal can wait."""
        return self._of(db).halt(dry_run=dry_run)

    def fallback_running(self, db: str) -> bool:
        return self._of(db).subscribed()

    def start_fallback(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """The role, the publication and a subscription with a slot of its own, no copy."""
        changes: list[Change] = []
        if not self.access_granted(db):
            changes += self.grant_access(db, dry_run=dry_run)
        if not self.source_prepared(db):
            changes += self.prepare_source(db, dry_run=dry_run)
        if not self.fallback_running(db):
            changes += self._of(db).subscribe_without_copy(dry_run=dry_run)
        return changes

    def stopped(self, db: str) -> bool:
        return not self._of(db).subscribed()

    def stop(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        return [] if self.stopped(db) else self._of(db).stop(dry_run=dry_run)

    def source_released(self, db: str) -> bool:
        return self._of(db).slot() is None

    def release_source(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        return self._of(db).release_source(dry_run=dry_run)

    def source_unprepared(self, db: str) -> bool:
        return not self._of(db).source_prepared()

    def unprepare_source(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        return self._of(db).unprepare_source(dry_run=dry_run)

    def access_revoked(self) -> bool:
        """The move's role is gone from both servers."""
        return not any(
            replication.role_exists(self._pool.get(side), self._role)
            for side in ("source", "target")
        )

    def revoke_access(self, *, dry_run: bool) -> Sequence[Change]:
        """`cutover_<move>` on both sides, after REASSIGN OWNED and DROP OWNED in each database."""
        changes: list[Change] = []
        for side, server in (("source", self._plan.source), ("target", self._plan.target)):
            maintenance = self._pool.get(side)
            # Closed on a failure too: the database it stopped in holds no session after it.
            with closing(self._each_database(side, maintenance)) as each:
                changes += replication.drop_role(
                    each, maintenance, self._role, heir=server.user, where=side, dry_run=dry_run
                )
        return changes

    def _each_database(self, side: str, maintenance: Connection) -> Generator[Connection]:
        """A session in each of the move's databases on one side, one after the other,
        writable even where a fence left the database read-only."""
        for db in self._plan.databases:
            if admin.database_exists(maintenance, db):
                with self._pool.borrow(side, db) as conn:
                    admin.allow_writes(conn)
                    yield conn

    def uninstalled(self, db: str) -> bool:
        return self._of(db).uninstalled()

    def uninstall(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        return self._of(db).uninstall(dry_run=dry_run)
