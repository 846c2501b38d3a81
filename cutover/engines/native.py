"""The native engine: PostgreSQL's own publications and subscriptions."""

import secrets
from collections.abc import Sequence

from cutover.engines.base import READY_STATES, CopyProgress
from cutover.log import register_secret
from cutover.pg import barrier, replication
from cutover.pg.catalog import Relation
from cutover.pg.connect import Pool
from cutover.plan import Plan
from cutover.steps import Change


class NativeEngine:
    """Publication on the source, subscription on the target, one slot per database."""

    def __init__(self, plan: Plan, pool: Pool, db: str, *, copy_data: bool = True) -> None:
        self._plan = plan
        self._pool = pool
        self._db = db
        self._copy_data = copy_data
        self.name = replication.object_name(plan.move)
        self.slot_name = replication.slot_name(plan.move, db)

    @property
    def _where(self) -> tuple[str, str]:
        return f"source/{self._db}", f"target/{self._db}"

    def _tables(self) -> list[Relation]:
        return replication.replicated_tables(self._pool.get("source", self._db))

    def replication_role_ready(self) -> bool:
        """The role exists and may read every replicated table."""
        source = self._pool.get("source", self._db)
        return replication.role_exists(source, self.name) and replication.can_read(
            source, self.name, self._tables()
        )

    def create_replication_role(self, *, dry_run: bool) -> Sequence[Change]:
        """A role that may replicate and read the replicated tables, nothing more."""
        source = self._pool.get("source", self._db)
        schemas = sorted({t.schema for t in self._tables()})
        return [
            *replication.create_role(source, self.name, target="source", dry_run=dry_run),
            *replication.grant_read(
                source, self.name, schemas, target=self._where[0], dry_run=dry_run
            ),
        ]

    def publication_exists(self) -> bool:
        """Whether the source publishes for this move."""
        return replication.publication_exists(self._pool.get("source", self._db), self.name)

    def create_publication(self, *, dry_run: bool) -> Sequence[Change]:
        """Publish every replicated table, the barrier table included."""
        source = self._pool.get("source", self._db)
        return replication.create_publication(
            source, self.name, self._tables(), target=self._where[0], dry_run=dry_run
        )

    def subscription_exists(self) -> bool:
        """Whether the target subscribes for this move."""
        return replication.subscription_exists(self._pool.get("target", self._db), self.name)

    def create_subscription(self, *, dry_run: bool) -> Sequence[Change]:
        """A new password for the role, then the subscription that uses it."""
        password = secrets.token_urlsafe(32)
        register_secret(password)
        dsn = replication.source_conninfo(
            self._plan.source, self._db, role=self.name, password=password
        )
        return [
            replication.set_password(
                self._pool.get("source", self._db),
                self.name,
                password,
                target="source",
                dry_run=dry_run,
            ),
            replication.create_subscription(
                self._pool.get("target", self._db),
                self.name,
                source_dsn=dsn,
                slot=self.slot_name,
                copy_data=self._copy_data,
                target=self._where[1],
                dry_run=dry_run,
            ),
        ]

    def progress(self) -> CopyProgress:
        """Each table's copy state, and bytes copied out of the source tables' size."""
        target = self._pool.get("target", self._db)
        states = replication.table_states(target, self.name)
        sizes = replication.table_sizes(
            self._pool.get("source", self._db), [(t.schema, t.name) for t in states]
        )
        copied = sum(
            sizes.get((t.schema, t.name), 0)
            for t in states
            if t.state in READY_STATES | {"copied", "syncing"}
        )
        in_flight = replication.copy_in_flight(target)
        total = sum(sizes.values())
        return CopyProgress(
            tables={replication.display((t.schema, t.name)): t.state for t in states},
            bytes_total=total,
            bytes_done=min(total, copied + in_flight),
        )

    def slot(self) -> replication.SlotState | None:
        """The slot's lag and retained WAL on the source."""
        return replication.slot_state(self._pool.get("source", self._db), self.slot_name)

    def ready_to_switch(self) -> bool:
        """Apply commits are synchronous, so the slot confirms a barrier within ms."""
        return replication.synchronous_commit(self._pool.get("target", self._db), self.name)

    def prepare_switch(self, *, dry_run: bool) -> Sequence[Change]:
        """Make apply commits synchronous (the copy ran faster without)."""
        return [
            replication.set_synchronous_commit(
                self._pool.get("target", self._db),
                self.name,
                target=self._where[1],
                dry_run=dry_run,
            )
        ]

    def write_barrier(self, token: str) -> str:
        """Commit the marker on the source; the WAL position after it."""
        return barrier.write_marker(self._pool.get("source", self._db), self._plan.move, token)

    def barrier_reached(self, token: str, lsn: str) -> bool:
        """The target applied the marker and the slot confirmed its position."""
        return barrier.marker_arrived(
            self._pool.get("target", self._db), token
        ) and barrier.slot_confirmed(self._pool.get("source", self._db), self.slot_name, lsn)

    def is_promoted(self) -> bool:
        """The subscription and its slot are gone: the target stands alone."""
        return not replication.subscription_exists(
            self._pool.get("target", self._db), self.name
        ) and not replication.slot_exists(self._pool.get("source", self._db), self.slot_name)

    def promote(self, *, dry_run: bool) -> Sequence[Change]:
        """End the subscription, then drop the slot so it pins no WAL on the source."""
        return [
            *replication.drop_subscription(
                self._pool.get("target", self._db),
                self.name,
                target=self._where[1],
                dry_run=dry_run,
            ),
            *replication.drop_slot(
                self._pool.get("source", self._db), self.slot_name, target="source", dry_run=dry_run
            ),
        ]


def build(plan: Plan, pool: Pool, db: str, *, copy_data: bool = True) -> NativeEngine:
    """The engine for one database (without copy_data: the target has the rows already)."""
    return NativeEngine(plan, pool, db, copy_data=copy_data)
