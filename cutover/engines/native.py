"""The native engine: PostgreSQL's own publications and subscriptions."""

import secrets
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass
from functools import partial

from cutover.engines.base import Barrier, Engine, Traits
from cutover.engines.postgres import PerDatabase
from cutover.ledger import move_id
from cutover.log import register_secret
from cutover.pg import barrier, catalog, copy, replication
from cutover.pg.catalog import Relation
from cutover.pg.connect import Pool
from cutover.pg.execute import render
from cutover.plan import Plan, resolve_secret
from cutover.steps import Change
from cutover.types import SyncProgress, TableName

TRAITS = Traits(keys_before_copy=False)  # the copy fills bare tables; keys are built after it


@dataclass
class Credential:
    """The password this command gave the move's role, shared by its databases: the
    subscriptions made after it use it as it is, and none has to be told of it again."""

    password: str | None = None


class NativeReplication:
    """Publication on the source, subscription on the target, one slot per database."""

    def __init__(self, plan: Plan, pool: Pool, credential: Credential, db: str) -> None:
        self._plan = plan
        self._pool = pool
        self._credential = credential
        self._db = db
        self.name = replication.object_name(plan.move)
        self.slot_name = replication.slot_name(plan.move, db)

    @property
    def _where(self) -> tuple[str, str]:
        return f"source/{self._db}", f"target/{self._db}"

    def _tables(self) -> list[Relation]:
        return replication.replicated_tables(self._pool.get("source", self._db))

    def installed(self) -> bool:
        """Native replication needs nothing installed."""
        return True

    def install(self, *, dry_run: bool) -> Sequence[Change]:
        """Nothing to install."""
        return []

    def access_granted(self) -> bool:
        """The role exists and may read every replicated table."""
        source = self._pool.get("source", self._db)
        role = replication.replicating_role(source, self.name, self._plan.source.user)
        return replication.role_exists(source, role) and replication.can_read(
            source, role, self._tables()
        )

    def grant_access(self, *, dry_run: bool) -> Sequence[Change]:
        """A role that may replicate and read the replicated tables, nothing more."""
        source = self._pool.get("source", self._db)
        if replication.replicating_role(source, self.name, self._plan.source.user) != self.name:
            return []  # the plan's user replicates: it may not create a replication role
        schemas = sorted({t.schema for t in self._tables()})
        return [
            *replication.create_role(
                source, self.name, marked=self._mark(), where="source", dry_run=dry_run
            ),
            *replication.grant_read(
                source, self.name, schemas, where=self._where[0], dry_run=dry_run
            ),
        ]

    def source_prepared(self) -> bool:
        """Whether the source publishes for this move."""
        return replication.publication_exists(self._pool.get("source", self._db), self.name)

    def prepare_source(self, *, dry_run: bool) -> Sequence[Change]:
        """Publish every replicated table, the barrier table included."""
        source = self._pool.get("source", self._db)
        return replication.create_publication(
            source,
            self.name,
            self._tables(),
            marked=self._mark(),
            where=self._where[0],
            dry_run=dry_run,
        )

    def subscribed(self) -> bool:
        """Whether the target subscribes for this move."""
        return replication.subscription_exists(self._pool.get("target", self._db), self.name)

    def subscribe_without_copy(self, *, dry_run: bool) -> Sequence[Change]:
        """A subscription with a slot of its own, for a target that has the rows already."""
        return self._subscribe(create_slot=True, enabled=True, dry_run=dry_run)

    def _subscribe(self, *, create_slot: bool, enabled: bool, dry_run: bool) -> list[Change]:
        """A new password for the role, then the subscription that uses it."""
        source = self._pool.get("source", self._db)
        role = replication.replicating_role(source, self.name, self._plan.source.user)
        changes = []
        if role == self.name and self._credential.password is not None:
            password = self._credential.password  # the other subscriptions use it already
        elif role == self.name:
            password = secrets.token_urlsafe(32)
            register_secret(password)
            changes.append(
                replication.set_password(source, role, password, where="source", dry_run=dry_run)
            )
            changes += self._reconnect_others(role, password, dry_run=dry_run)
            self._credential.password = password
        else:  # the plan's own user, with its own password
            password = resolve_secret(self._plan.source.password or "", where="source.password")
        dsn = replication.source_conninfo(self._plan.source, self._db, role=role, password=password)
        target = self._pool.get("target", self._db)
        return [
            *changes,
            replication.create_subscription(
                target,
                self.name,
                source_dsn=dsn,
                slot=self.slot_name,
                create_slot=create_slot,
                enabled=enabled,
                where=self._where[1],
                dry_run=dry_run,
            ),
            replication.comment(
                target,
                "SUBSCRIPTION",
                self.name,
                self._mark(),
                where=self._where[1],
                dry_run=dry_run,
            ),
        ]

    def _reconnect_others(self, role: str, password: str, *, dry_run: bool) -> list[Change]:
        """The move's other databases subscribe as the same role (a role is the server's):
        their subscriptions get its new password, or they fail at their next connection."""
        target = self._pool.get("target")
        present = catalog.existing_databases(target, self._plan.databases)
        changes = []
        for db in self._plan.databases:
            if db == self._db or db not in present:
                continue
            with self._pool.borrow("target", db) as conn:
                if replication.subscription_exists(conn, self.name):
                    dsn = replication.source_conninfo(
                        self._plan.source, db, role=role, password=password
                    )
                    changes.append(
                        replication.set_connection(
                            conn, self.name, dsn, where=f"target/{db}", dry_run=dry_run
                        )
                    )
        return changes

    def carry(self, tables: Sequence[TableName], *, dry_run: bool) -> Sequence[Change]:
        """Published, readable by the role, then the subscription refreshed: it copies their rows
        (its own table sync) and streams their changes."""
        source = self._pool.get("source", self._db)
        role = replication.replicating_role(source, self.name, self._plan.source.user)
        return [
            *replication.grant_tables(
                source, "SELECT", role, tables, where=self._where[0], dry_run=dry_run
            ),
            replication.publish(source, self.name, tables, where=self._where[0], dry_run=dry_run),
            replication.refresh_subscription(
                self._pool.get("target", self._db), self.name, where=self._where[1], dry_run=dry_run
            ),
        ]

    def resume_apply(self, *, dry_run: bool) -> Sequence[Change]:
        """Nothing: a failed apply worker starts again by itself (wal_retrieve_retry_interval)."""
        return []

    def _mark(self) -> str:
        """What marks the objects this move makes as its own."""
        return replication.mark(self._plan.move, move_id(self._plan))

    def initial_sync(
        self,
        *,
        jobs: int,
        deadline: float,
        on_progress: Callable[[SyncProgress], None],
        dry_run: bool,
    ) -> Sequence[Change]:
        """The slot and its snapshot, every table copied in it, then the subscription, disabled.

        The subscription is made last, so its existence says the copy is whole.
        A copy that a killed controller left half done is started over: its
        slot is dropped and the tables are emptied first.
        """
        source = self._pool.get("source", self._db)
        target = self._pool.get("target", self._db)
        # Unlogged tables are copied here, once, and never published: they write no WAL.
        copied = [*self._tables(), *replication.unlogged_tables(source)]
        tables = [(t.schema, t.name) for t in copied]
        described = [
            Change(self._where[0], render(source, copy.slot_command(self.slot_name))),
            Change(
                self._where[1],
                f"the rows of {len(tables)} tables, copied in that snapshot, {jobs} at a time",
            ),
        ]
        if dry_run:
            return described + self._subscribe(create_slot=False, enabled=False, dry_run=True)
        leftover = replication.slot_exists(source, self.slot_name)
        if not leftover:
            copy.refuse_rows(target, tables, self._db)
        else:
            replication.drop_slot(source, self.slot_name, where="source", dry_run=False)
        parts = copy.plan_parts(
            source, tables, jobs=jobs, binary=copy.same_major_version(source, target)
        )
        # Keys on the target mean a copy is done again after the indexes were built:
        # every table is emptied in one statement, and none can be refilled with FREEZE.
        keyed = bool(catalog.foreign_keys(target))
        split = {p.table for p in parts if p.pages is not None}
        freeze = set() if keyed else {t for t in tables if t not in split}
        plan = self._plan
        try:
            with copy.exported_snapshot(plan.source, self._db, self.slot_name) as snapshot:
                copy.truncate(target, [t for t in tables if t not in freeze])
                copier = copy.Copier(
                    plan.source, plan.target, self._db, snapshot=snapshot, freeze=freeze
                )
                copier.run(parts, jobs=jobs, deadline=deadline, on_progress=on_progress)
        except BaseException:
            # Leave nothing half done: no rows from this copy, no slot pinning WAL.
            with suppress(Exception):
                copy.truncate(target, tables)
                replication.drop_slot(source, self.slot_name, where="source", dry_run=False)
            raise
        return described + self._subscribe(create_slot=False, enabled=False, dry_run=False)

    def streaming(self) -> bool:
        """The subscription applies what the slot streams."""
        return replication.subscription_enabled(self._pool.get("target", self._db), self.name)

    def stream(self, *, dry_run: bool) -> Sequence[Change]:
        """Enable the subscription: the changes since the copy's snapshot are applied."""
        target = self._pool.get("target", self._db)
        where = self._where[1]
        return [replication.enable_subscription(target, self.name, where=where, dry_run=dry_run)]

    def progress(self) -> SyncProgress:
        """Each table's state; during a copy that another process runs, as the target shows it."""
        target = self._pool.get("target", self._db)
        if replication.subscription_exists(target, self.name):
            states = replication.table_states(target, self.name)
            tables = {replication.display((t.schema, t.name)): t.state for t in states}
            total = sum(
                replication.table_sizes(
                    self._pool.get("source", self._db), [(t.schema, t.name) for t in states]
                ).values()
            )
            return SyncProgress(tables, total, total)
        copies = replication.copy_states(
            self._pool.get("source", self._db), target, [(t.schema, t.name) for t in self._tables()]
        )
        return SyncProgress(
            tables={replication.display((c.schema, c.name)): c.state for c in copies},
            bytes_total=sum(c.bytes_source for c in copies),
            bytes_done=sum(min(c.bytes_source, c.bytes_target) for c in copies),
        )

    def apply_stopped(self) -> bool:
        """False: the native worker's failures are counted (apply_errors)."""
        return False

    def apply_errors(self) -> int:
        """The subscription's apply and copy errors, as pg_stat_subscription_stats counts."""
        return catalog.subscription_errors(self._pool.get("target", self._db), self.name)

    def describe(self) -> str | None:
        """Nothing beyond the subscription's state and the slot."""
        return None

    def heartbeat(self) -> None:
        """Not needed: the subscription confirms positions on an idle source too."""

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
                where=self._where[1],
                dry_run=dry_run,
            )
        ]

    def write_barrier(self, token: str) -> Barrier:
        """Commit the marker on the source; the WAL position after it."""
        source = self._pool.get("source", self._db)
        return Barrier(token, barrier.write_marker(source, self._plan.move, token))

    def barrier_reached(self, marker: Barrier) -> bool:
        """The target applied the marker and the slot confirmed its position."""
        return barrier.marker_arrived(
            self._pool.get("target", self._db), marker.token
        ) and barrier.slot_confirmed(
            self._pool.get("source", self._db), self.slot_name, marker.position
        )

    def halted(self) -> bool:
        """The subscription is gone: nothing is applied any more."""
        return not self.subscribed()

    def halt(self, *, dry_run: bool) -> Sequence[Change]:
        """Drop the subscription: DROP SUBSCRIPTION returns once its workers have ended."""
        return self.stop(dry_run=dry_run)

    def stop(self, *, dry_run: bool) -> Sequence[Change]:
        """Drop the subscription, leaving the slot (dropped next, even when unreachable now)."""
        target = self._pool.get("target", self._db)
        return replication.drop_subscription(
            target, self.name, where=self._where[1], dry_run=dry_run
        )

    def release_source(self, *, dry_run: bool) -> Sequence[Change]:
        """Drop the move's slot on the source."""
        source = self._pool.get("source", self._db)
        if not replication.slot_exists(source, self.slot_name):
            return []
        return replication.drop_slot(source, self.slot_name, where="source", dry_run=dry_run)

    def unprepare_source(self, *, dry_run: bool) -> Sequence[Change]:
        """Drop the publication."""
        source = self._pool.get("source", self._db)
        return replication.drop_publication(
            source, self.name, where=self._where[0], dry_run=dry_run
        )

    def uninstalled(self) -> bool:
        """Nothing was installed."""
        return True

    def uninstall(self, *, dry_run: bool) -> Sequence[Change]:
        """Nothing to remove."""
        return []


def build(plan: Plan, pool: Pool) -> Engine:
    """The engine of a move."""
    replicating = partial(NativeReplication, plan, pool, Credential())
    return PerDatabase("native", TRAITS, plan, pool, replicating)
