"""The pglogical engine: nodes, a replication set and a pglogical subscription.

pglogical copies the tables itself, in one transaction on the subscriber, in
the snapshot its slot starts from; cutover builds the target's keys and indexes
first, since changes are applied by key as soon as that copy commits. The
schema is never synchronised by pglogical: prepare copied it.
"""

import secrets
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import suppress
from functools import partial

from cutover import wait
from cutover.engines.base import Barrier, Engine, Traits
from cutover.engines.postgres import PerDatabase
from cutover.errors import StepFailed
from cutover.ledger import move_id
from cutover.log import register_secret
from cutover.pg import barrier, catalog, copy, pglogical, replication, sequences
from cutover.pg.catalog import Relation
from cutover.pg.connect import Connection, Pool
from cutover.plan import Plan, Server, resolve_secret
from cutover.steps import Change
from cutover.types import SyncProgress, TableName, TableState

HEARTBEAT_SECONDS = 1.0
POLL_SECONDS = 0.2
WORKER_END_SECONDS = 10.0  # a disabled subscription's apply worker ends within this
# A subscription whose worker stays down this long during the copy will not recover by
# itself. Not less: pglogical's supervisor starts a new database's manager (which starts
# the worker) only after starting one for each database of the server in turn, and with
# about 400 databases on the target that took 31 s (measured on the test suite's lab).
DOWN_SECONDS = 120.0


TRAITS = Traits(keys_before_copy=True)  # pglogical applies by key as soon as its copy commits


class PglogicalReplication:
    """A provider node and replication set on the source, a subscriber node and subscription."""

    def __init__(self, plan: Plan, pool: Pool, db: str) -> None:
        self._plan = plan
        self._pool = pool
        self._db = db
        self.name = replication.object_name(plan.move)
        self._slot_name: str | None = None
        self._last_heartbeat = 0.0

    @property
    def _where(self) -> tuple[str, str]:
        return f"source/{self._db}", f"target/{self._db}"

    def _source(self) -> Connection:
        return self._pool.get("source", self._db)

    def _target(self) -> Connection:
        return self._pool.get("target", self._db)

    def _tables(self) -> list[Relation]:
        return replication.replicated_tables(self._source())

    # -- prepare -------------------------------------------------------------------------------

    def installed(self) -> bool:
        """The extension exists in the source database."""
        return pglogical.extension_installed(self._source())

    def install(self, *, dry_run: bool) -> Sequence[Change]:
        """CREATE EXTENSION pglogical on the source, marked as this move's.

        The target gets it with the schema copy, comment included, so both sides
        say alike whether cutover created it.
        """
        return pglogical.create_extension(
            self._source(), self._plan.move, where=self._where[0], dry_run=dry_run
        )

    def _source_role(self) -> str:
        """The role the target replicates as: the move's, or the plan's user (see replication)."""
        return replication.replicating_role(self._source(), self.name, self._plan.source.user)

    def access_granted(self) -> bool:
        """The role exists and may read every table and pglogical's catalog."""
        source, role = self._source(), self._source_role()
        return (
            replication.role_exists(source, role)
            and replication.can_read(source, role, self._tables())
            and pglogical.can_read_catalog(source, role)
        )

    def grant_access(self, *, dry_run: bool) -> Sequence[Change]:
        """A role that may replicate, read the tables and read pglogical's catalog."""
        source = self._source()
        if self._source_role() != self.name:
            return []  # the plan's user replicates: it may not create a replication role
        schemas = sorted({t.schema for t in self._tables()})
        return [
            *replication.create_role(
                source,
                self.name,
                marked=replication.mark(self._plan.move, move_id(self._plan)),
                where="source",
                dry_run=dry_run,
            ),
            *replication.grant_read(
                source, self.name, schemas, where=self._where[0], dry_run=dry_run
            ),
            *pglogical.grant_provider(source, self.name, where=self._where[0], dry_run=dry_run),
        ]

    def source_prepared(self) -> bool:
        """The replication set exists on the source."""
        return pglogical.set_exists(self._source(), self.name)

    def prepare_source(self, *, dry_run: bool) -> Sequence[Change]:
        """The source's node (unless it has one), then a set of every table and sequence."""
        source = self._source()
        changes = self._ensure_node(source, self._plan.source, "source", dry_run=dry_run)
        tables = [(t.schema, t.name) for t in self._tables()]
        return changes + pglogical.create_set(
            source,
            self.name,
            tables,
            sequences.names(source),
            where=self._where[0],
            dry_run=dry_run,
        )

    def _nodes(self, side: str) -> Iterator[pglogical.Node]:
        """The nodes of the move's databases on one side, this one first, each read as
        its turn comes (the other databases' sessions closed after)."""
        present = catalog.existing_databases(self._pool.get(side), self._plan.databases)
        ordered = [self._db, *(db for db in self._plan.databases if db != self._db)]
        for db in (db for db in ordered if db in present):
            with self._pool.borrow(side, db) as conn:
                node = pglogical.local_node(conn)
            if node is not None:
                yield node

    def _role_password(
        self, conn: Connection, role: str, side: str, where: str, *, dry_run: bool
    ) -> tuple[str, list[Change]]:
        """The password of the move's role on one side.

        A node connection string that names the role keeps working only as long as
        the role's password stays: that password is reused, never replaced, also
        when it was set for another database of the move (the role is the server's).
        """
        if role != self.name:  # the plan's own user, with its own password
            return resolve_secret(self._plan.source.password or "", where="source.password"), []
        for node in self._nodes(side):  # the role is the server's: one password for every db
            if node.user == role and node.password:
                register_secret(node.password)
                return node.password, []
        password = secrets.token_urlsafe(32)
        register_secret(password)
        return password, [
            replication.set_password(conn, role, password, where=where, dry_run=dry_run)
        ]

    def _ensure_node(
        self, conn: Connection, server: Server, side: str, *, dry_run: bool
    ) -> list[Change]:
        """This database's node on one side, unless it has one (pglogical allows one)."""
        if pglogical.local_node(conn) is not None:
            return []
        where = f"{side}/{self._db}"
        role = self._source_role() if side == "source" else self.name
        password, changes = self._role_password(conn, role, side, where, dry_run=dry_run)
        dsn = replication.source_conninfo(server, self._db, role=role, password=password)
        node = f"{self.name}_{side}"
        return [*changes, pglogical.create_node(conn, node, dsn, where=where, dry_run=dry_run)]

    # -- start ---------------------------------------------------------------------------------

    def subscribed(self) -> bool:
        """Whether the target subscribes for this move."""
        return pglogical.subscription(self._target(), self.name) is not None

    def subscribe_without_copy(self, *, dry_run: bool) -> Sequence[Change]:
        """A subscription without a copy, for a target that has the rows already (fallback)."""
        return self._subscribe(with_copy=False, dry_run=dry_run)

    def _subscribe(self, *, with_copy: bool, dry_run: bool) -> list[Change]:
        """The subscriber's node and the grants its copy needs, then the subscription."""
        source, target = self._source(), self._target()
        changes = pglogical.create_extension(
            target, self._plan.move, where=self._where[1], dry_run=dry_run
        )  # already there when the schema copy brought it
        changes += self._ensure_node(target, self._plan.target, "target", dry_run=dry_run)
        if with_copy:
            schemas = sorted({t.schema for t in self._tables()})
            changes += pglogical.grant_copy(
                target, self.name, schemas, where=self._where[1], dry_run=dry_run
            )
        role = self._source_role()
        password, rotated = self._role_password(source, role, "source", "source", dry_run=dry_run)
        dsn = replication.source_conninfo(self._plan.source, self._db, role=role, password=password)
        return [
            *changes,
            *rotated,
            pglogical.create_subscription(
                target,
                self.name,
                provider_dsn=dsn,
                sets=[self.name],
                copy=with_copy,
                where=self._where[1],
                dry_run=dry_run,
            ),
        ]

    def initial_sync(
        self,
        *,
        jobs: int,
        deadline: float,
        on_progress: Callable[[SyncProgress], None],
        dry_run: bool,
    ) -> Sequence[Change]:
        """Subscribe with pglogical's own copy of every table, and wait until it committed.

        The copy runs in the target server: a controller that dies leaves it going.
        A copy that fails, or outlasts copy_timeout, is undone: the subscription
        and its slot are dropped and the tables emptied, so start begins anew.
        """
        tables = [(t.schema, t.name) for t in self._tables()]
        # Unlogged tables are no replication set's: copied once, after pglogical's copy
        # (their keys may point at its tables), outside its snapshot.
        unlogged = [(t.schema, t.name) for t in replication.unlogged_tables(self._source())]
        if not dry_run:
            copy.refuse_rows(self._target(), tables + unlogged, self._db)
        changes = self._subscribe(with_copy=True, dry_run=dry_run)
        if unlogged:
            changes.append(
                Change(self._where[1], f"the rows of {len(unlogged)} unlogged tables, copied once")
            )
        if dry_run:
            return changes
        try:
            self._wait_for_copy(deadline, on_progress)
            if unlogged:
                source, target = self._source(), self._target()
                binary = copy.same_major_version(source, target)
                parts = copy.plan_parts(source, unlogged, jobs=jobs, binary=binary)
                copier = copy.Copier(
                    self._plan.source, self._plan.target, self._db, snapshot=None, freeze=set()
                )
                copier.run(parts, jobs=jobs, deadline=deadline, on_progress=on_progress)
        except StepFailed:
            with suppress(Exception):
                self.stop(dry_run=False)
                self.release_source(dry_run=False)
                copy.truncate(self._target(), tables + unlogged)
            raise
        return changes

    def _wait_for_copy(self, deadline: float, on_progress: Callable[[SyncProgress], None]) -> None:
        down_since: float | None = None

        def committed() -> bool:
            nonlocal down_since
            sub = pglogical.subscription(self._target(), self.name)
            if sub is None:
                raise StepFailed(
                    f"the pglogical subscription of {self._db} disappeared during its copy",
                    hint="someone dropped it; run start again to copy anew",
                )
            on_progress(self.progress())
            if sub.sync is TableState.READY:
                return True
            now = time.monotonic()
            down_since = (down_since or now) if sub.status == "down" else None
            if down_since is not None and now - down_since > DOWN_SECONDS:
                raise StepFailed(
                    f"pglogical's copy of {self._db} stopped: its worker has been down for "
                    f"{DOWN_SECONDS:g} s",
                    hint="the target server's log says why (a grant, a row that breaks a "
                    "constraint, the source unreachable); fix it and run start again",
                )
            return False

        wait.until(
            committed,
            timeout=max(0.0, deadline - time.monotonic()),
            interval=POLL_SECONDS,
            on_tick=self.heartbeat,
            what=f"pglogical's copy of {self._db} did not finish",
            hint="raise thresholds.copy_timeout and run start again",
        )

    def streaming(self) -> bool:
        """The subscription exists and is enabled (pglogical streams once its copy is done)."""
        sub = pglogical.subscription(self._target(), self.name)
        return sub is not None and sub.status != "disabled"

    def stream(self, *, dry_run: bool) -> Sequence[Change]:
        """Enable the subscription (it is enabled when made; this undoes a manual disable)."""
        return [
            pglogical.enable_subscription(
                self._target(), self.name, where=self._where[1], dry_run=dry_run
            )
        ]

    def carry(self, tables: Sequence[TableName], *, dry_run: bool) -> Sequence[Change]:
        """Readable by the role, insertable by the subscriber's copy, then added to the set:
        pglogical copies their rows and streams their changes."""
        source, target = self._source(), self._target()
        return [
            *replication.grant_tables(
                source, "SELECT", self._source_role(), tables, where=self._where[0], dry_run=dry_run
            ),
            *replication.grant_tables(
                target, "INSERT", self.name, tables, where=self._where[1], dry_run=dry_run
            ),
            *pglogical.add_tables(source, self.name, tables, where=self._where[0], dry_run=dry_run),
        ]

    def resume_apply(self, *, dry_run: bool) -> Sequence[Change]:
        """A subscription whose apply worker failed (`down`) disabled and enabled: pglogical
        may wait minutes before it starts the worker again by itself."""
        target = self._target()
        sub = pglogical.subscription(target, self.name)
        if sub is None or sub.status != "down":
            return []
        where = self._where[1]
        return [
            pglogical.disable_subscription(target, self.name, where=where, dry_run=dry_run),
            pglogical.enable_subscription(target, self.name, where=where, dry_run=dry_run),
        ]

    def progress(self) -> SyncProgress:
        """pglogical's state per table once its copy committed; before, what the target shows."""
        source, target = self._source(), self._target()
        tables = [(t.schema, t.name) for t in self._tables()]
        sub = pglogical.subscription(target, self.name)
        if sub is not None and sub.sync is TableState.READY:
            # What the set carries: a table made on the source since is not in it.
            tables = [(t.schema, t.name) for t in pglogical.set_tables(source, self.name)]
            # A subscription made without a copy keeps no state per table: all are ready.
            known = {(t.schema, t.name): t.state for t in pglogical.table_states(target, self.name)}
            total = sum(replication.table_sizes(source, tables).values())
            states = {replication.display(t): known.get(t, TableState.READY) for t in tables}
            return SyncProgress(states, total, total)
        copies = replication.copy_states(source, target, tables)
        # One transaction copies every table: none is there before it commits.
        return SyncProgress(
            tables={
                replication.display((c.schema, c.name)): TableState.QUEUED
                if c.state is TableState.QUEUED
                else TableState.COPYING
                for c in copies
            },
            bytes_total=sum(c.bytes_source for c in copies),
            bytes_done=sum(min(c.bytes_source, c.bytes_target) for c in copies),
        )

    def apply_stopped(self) -> bool:
        """pglogical's own state of the subscription: `down` while its apply worker failed."""
        sub = pglogical.subscription(self._target(), self.name)
        return sub is not None and sub.status == "down"

    def apply_errors(self) -> int:
        """pglogical counts no errors: a failing apply shows as a worker that is down."""
        return 0

    def describe(self) -> str | None:
        """pglogical's own status of the subscription and of its initial copy."""
        sub = pglogical.subscription(self._target(), self.name)
        if sub is None:
            return None
        return f"pglogical subscription {sub.status}, initial copy {sub.sync}"

    def heartbeat(self) -> None:
        """At most one small commit a second on the source, so its WAL moves and is confirmed."""
        now = time.monotonic()
        if now - self._last_heartbeat >= HEARTBEAT_SECONDS:
            pglogical.heartbeat(self._source(), self._plan.move)
            self._last_heartbeat = now

    def _slot(self) -> str | None:
        """The subscription's slot on the source, as pglogical names it."""
        if self._slot_name is None:
            sub = pglogical.subscription(self._target(), self.name)
            if sub is not None:
                self._slot_name = sub.slot
            else:
                node = pglogical.local_node(self._source())
                if node is None:
                    return None
                self._slot_name = pglogical.slot_name(
                    self._source(), self._db, node.name, self.name
                )
        return self._slot_name

    def slot(self) -> replication.SlotState | None:
        """The slot's lag and retained WAL on the source."""
        name = self._slot()
        return None if name is None else replication.slot_state(self._source(), name)

    # -- switch --------------------------------------------------------------------------------

    def ready_to_switch(self) -> bool:
        """Nothing to prepare: the barrier is made durable on the target by a flush."""
        return True

    def prepare_switch(self, *, dry_run: bool) -> Sequence[Change]:
        """Nothing to prepare."""
        return []

    def write_barrier(self, token: str) -> Barrier:
        """Commit the marker on the source; the WAL position after it."""
        return Barrier(token, barrier.write_marker(self._source(), self._plan.move, token))

    def barrier_reached(self, marker: Barrier) -> bool:
        """The target applied the marker, and its WAL is flushed past it.

        pglogical's apply commits asynchronously and confirms to the slot about
        once a second; a synchronous commit on the target flushes every commit
        before it, the marker's included, in milliseconds.
        """
        target = self._target()
        if not barrier.marker_arrived(target, marker.token):
            return False
        barrier.flush(target)
        return True

    def halted(self) -> bool:
        """Nothing is applied any more: the subscription is disabled or gone, its worker ended."""
        target = self._target()
        sub = pglogical.subscription(target, self.name)
        return sub is None or (
            sub.status == "disabled" and not pglogical.apply_worker_running(target, self.name)
        )

    def halt(self, *, dry_run: bool) -> Sequence[Change]:
        """Disable the subscription and wait until its apply worker has ended."""
        self._slot()  # remembered while the subscription tells it
        target = self._target()
        change = pglogical.disable_subscription(
            target, self.name, where=self._where[1], dry_run=dry_run
        )
        if not dry_run:
            self._worker_ended(target, timeout=WORKER_END_SECONDS)
        return [change]

    def _worker_ended(self, target: Connection, *, timeout: float) -> None:
        wait.until(
            lambda: not pglogical.apply_worker_running(target, self.name),
            timeout=timeout,
            interval=0.005,
            what="the pglogical apply worker did not end after its subscription was disabled",
            hint="look for a stuck apply worker in pg_stat_activity on the target",
        )

    # -- cleanup -------------------------------------------------------------------------------

    def stop(self, *, dry_run: bool) -> Sequence[Change]:
        """Stop the apply worker, then drop the pglogical subscription.

        Stopping the worker first and waiting until its sender is gone spares
        drop_subscription its own wait for the worker, up to a second.
        """
        name = self._slot()  # remembered while the subscription tells it
        target = self._target()
        changes = [
            pglogical.disable_subscription(target, self.name, where=self._where[1], dry_run=dry_run)
        ]
        if not dry_run and name is not None:  # the worker ends with its sender
            replication.released(self._source(), name, timeout=10.0, poll=0.005)
            # Its sender may go a moment before the worker leaves pglogical's registry.
            with suppress(StepFailed):
                self._worker_ended(target, timeout=2.0)  # else drop_subscription waits for it
        return changes + pglogical.drop_subscription(
            target, self.name, where=self._where[1], dry_run=dry_run
        )

    def release_source(self, *, dry_run: bool) -> Sequence[Change]:
        """Drop the subscription's slot, if pglogical could not.

        Dropping the subscription drops its slot on the source: while the
        subscription exists (a dry run of promote), this drops nothing.
        """
        name = self._slot()
        if name is None or not replication.slot_exists(self._source(), name):
            return []
        if dry_run and self.subscribed():
            return []
        return replication.drop_slot(self._source(), name, where="source", dry_run=dry_run)

    def unprepare_source(self, *, dry_run: bool) -> Sequence[Change]:
        """Drop the replication set."""
        return pglogical.drop_set(self._source(), self.name, where=self._where[0], dry_run=dry_run)

    def _ours(self) -> list[tuple[Connection, str, str | None, bool]]:
        """Each side: its connection, where, its node if cutover made it, the extension if ours."""
        found = []
        for side in ("source", "target"):
            if self._db not in catalog.existing_databases(self._pool.get(side), [self._db]):
                continue  # nothing of the move's is where its database is not
            conn = self._pool.get(side, self._db)
            node = pglogical.local_node(conn)
            mine = node.name if node is not None and node.name == f"{self.name}_{side}" else None
            ours = pglogical.extension_ours(conn, self._plan.move)
            found.append((conn, f"{side}/{self._db}", mine, ours))
        return found

    def uninstalled(self) -> bool:
        """No node and no extension of this move is left."""
        return not any(node or ours for _, _, node, ours in self._ours())

    def uninstall(self, *, dry_run: bool) -> Sequence[Change]:
        """Drop the nodes cutover made, then the extension where cutover created it."""
        changes: list[Change] = []
        for conn, where, node, ours in self._ours():
            if node is not None:
                changes.append(pglogical.drop_node(conn, node, where=where, dry_run=dry_run))
            if ours:
                changes += pglogical.drop_extension(conn, where=where, dry_run=dry_run)
        return changes


def build(plan: Plan, pool: Pool) -> Engine:
    """The engine of a move."""
    return PerDatabase("pglogical", TRAITS, plan, pool, partial(PglogicalReplication, plan, pool))
