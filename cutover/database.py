"""The move's databases in the controller's words: what is done to them that is not replication.

The phases and the commands reach PostgreSQL only through an engine (replication)
or through this module (the database itself: its schema, its fence, its
sequences, large objects and views, the primary-key backfill). It is the one
door into cutover.pg above the engines; import-linter holds that.

A `where` names the place a change happens: `source/<db>`, `target/<db>`, or a side.
"""

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from cutover import wait
from cutover.errors import ConnectionFailed, PreconditionFailed
from cutover.ledger import move_id
from cutover.pg import (
    admin,
    backfill,
    barrier,
    catalog,
    checksum,
    copy,
    ddl_guard,
    drift,
    fence,
    large_objects,
    matviews,
    replication,
    schema,
    sequences,
    tools,
)
from cutover.pg.backfill import FillProgress, Key, Pressure, State
from cutover.pg.connect import Connection, DatabaseError, Pool, both, pool
from cutover.pg.drift import Drift
from cutover.pg.drift import Kind as DriftKind
from cutover.pg.errors import mask, translate
from cutover.pg.execute import change
from cutover.pg.ident import quote, statement
from cutover.plan import Plan
from cutover.steps import Change
from cutover.types import Side, TableName

__all__ = [
    "DatabaseError",
    "Drift",
    "DriftKind",
    "FillProgress",
    "Key",
    "KeyState",
    "Pool",
    "Pressure",
    "mask",
    "pool",
    "translate",
]

KeyState = State  # what a table has of the move's key


def where(side: Side, db: str) -> str:
    """How a change's place is written: `source/<db>`."""
    return f"{side}/{db}"


def ours(plan: Plan) -> list[str]:
    """The roles the move itself connects as: never fenced, allowed to write."""
    return [plan.source.user, replication.object_name(plan.move)]


# -- the database itself -----------------------------------------------------------------------


def exists(servers: Pool, side: Side, db: str) -> bool:
    """Whether the database exists on one side."""
    return admin.database_exists(servers.get(side), db)


def create(servers: Pool, side: Side, db: str, *, dry_run: bool) -> Sequence[Change]:
    """CREATE DATABASE on one side."""
    return admin.create_database(servers.get(side), db, where=str(side), dry_run=dry_run)


def answers(servers: Pool, side: Side) -> bool:
    """The server answers a query now (a broken connection is opened anew next time)."""
    servers.get(side).execute("SELECT 1")
    return True


def replication_workers(servers: Pool) -> tuple[int, int]:
    """The target's max_logical_replication_workers, and how many of them run now."""
    return catalog.logical_workers(servers.get(Side.TARGET.value))


def estimated_rows(servers: Pool, side: Side, db: str) -> int:
    """The planner's estimate of the rows of every user table: progress, not proof."""
    return catalog.estimated_rows(servers.get(side, db))


def writable(servers: Pool, side: Side, db: str) -> bool:
    """The database exists on that side, and this controller's sessions in it may write.

    A side made read-only by the fence stays so for everyone else.
    """
    if not exists(servers, side, db):
        return False
    admin.allow_writes(servers.get(side, db))
    return True


def replicated_tables(servers: Pool, db: str) -> list[TableName]:
    """The source's tables that replication carries, the barrier table left out."""
    return [
        TableName(t.schema, t.name)
        for t in replication.replicated_tables(servers.get("source", db))
    ]


def tables_without_key(plan: Plan, servers: Pool, db: str) -> list[TableName]:
    """The plan's backfill tables, or every replicated table with no key and no identity."""
    if plan.backfill.tables is not None:
        return [TableName(*t) for t in plan.backfill.tables]
    return [
        TableName(t.schema, t.name)
        for t in replication.replicated_tables(servers.get("source", db))
        if not t.has_primary_key and not t.has_identity_index and t.replica_identity != "f"
    ]


# -- logical decoding on the source ------------------------------------------------------------


def logical_decoding_on(servers: Pool) -> bool:
    """wal_level = logical on the source."""
    return catalog.settings(servers.get("source"), ["wal_level"]).get("wal_level") == "logical"


def enable_logical_decoding(servers: Pool, *, dry_run: bool) -> Change:
    """ALTER SYSTEM SET wal_level = logical: it takes effect at the next restart."""
    return catalog.alter_system(
        servers.get("source"), "wal_level", "logical", where="source", dry_run=dry_run
    )


def restart_source(
    servers: Pool,
    command: list[str],
    *,
    timeout: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Run the plan's restart command, then wait until the source decodes logically."""
    servers.close()  # the restart ends every session
    tools.run_command(command, timeout=timeout, what="the source's restart")

    def decoding() -> bool:
        try:
            return logical_decoding_on(servers)
        except ConnectionFailed:
            servers.close()
            return False

    wait.until(
        decoding,
        timeout=timeout,
        interval=0.5,
        what="the source did not answer with wal_level = logical after its restart",
        hint="check the restart command and the server's log",
        clock=clock,
        sleep=sleep,
    )


# -- the barrier table -------------------------------------------------------------------------


def barrier_table_exists(servers: Pool, side: Side, db: str) -> bool:
    """Whether `_cutover.barrier` exists on one side."""
    return exists(servers, side, db) and barrier.barrier_table_exists(servers.get(side, db))


def create_barrier_table(servers: Pool, side: Side, db: str, *, dry_run: bool) -> Sequence[Change]:
    """`_cutover.barrier` on one side (in a dry run before the database exists: rendered only)."""
    if exists(servers, side, db):
        conn = servers.get(side, db)
    elif dry_run:  # the database comes from an earlier step: render against the server
        conn = servers.get(side)
    else:
        raise PreconditionFailed(
            f"database {db} does not exist on the {side}",
            hint="run prepare again: create_target_database comes first",
        )
    return barrier.create_barrier_table(conn, where=where(side, db), dry_run=dry_run)


def barrier_marker(plan: Plan, servers: Pool, db: str) -> Change:
    """The barrier row a switch writes on the source, as a dry run shows it."""
    return barrier.render_marker(servers.get("source", db), plan.move, where=f"source/{db}")


def barrier_schema_exists(servers: Pool, side: Side, db: str) -> bool:
    """Whether the `_cutover` schema exists on one side."""
    return exists(servers, side, db) and barrier.schema_exists(servers.get(side, db))


def drop_barrier_schema(servers: Pool, side: Side, db: str, *, dry_run: bool) -> Sequence[Change]:
    """The `_cutover` schema, gone from one side."""
    if not writable(servers, side, db):
        return []
    return barrier.drop_schema(servers.get(side, db), where=where(side, db), dry_run=dry_run)


# -- the DDL guard (plan: ddl_guard) -----------------------------------------------------------


def ddl_guard_exists(plan: Plan, servers: Pool, db: str) -> bool:
    """Whether the move's DDL guard (its function and event triggers) is in the source's `db`."""
    return exists(servers, Side.SOURCE, db) and ddl_guard.exists(
        servers.get(Side.SOURCE, db), plan.move
    )


def ddl_guard_left(plan: Plan, servers: Pool, db: str) -> bool:
    """Whether any part of the move's DDL guard is in the source's `db`."""
    return exists(servers, Side.SOURCE, db) and ddl_guard.any_left(
        servers.get(Side.SOURCE, db), plan.move
    )


def guard_source_ddl(plan: Plan, servers: Pool, db: str, *, dry_run: bool) -> Sequence[Change]:
    """Event triggers in the source's `db` that refuse DDL from all but the move's own sessions."""
    return ddl_guard.create(
        servers.get(Side.SOURCE, db),
        plan.move,
        allowed=ours(plan),
        where=where(Side.SOURCE, db),
        dry_run=dry_run,
    )


def drop_ddl_guard(plan: Plan, servers: Pool, db: str, *, dry_run: bool) -> Sequence[Change]:
    """The move's DDL guard, gone from the source's `db` (whatever the plan says of it now)."""
    if not writable(servers, Side.SOURCE, db):
        return []
    return ddl_guard.drop(
        servers.get(Side.SOURCE, db), plan.move, where=where(Side.SOURCE, db), dry_run=dry_run
    )


# -- the schema --------------------------------------------------------------------------------


def archive_path(plan: Plan, db: str) -> Path:
    """Where the schema archive of one database is kept between prepare and start."""
    return plan.state_dir / f"{replication.slot_name(plan.move, db)}.schema.dump"


def tables_missing_on_target(
    servers: Pool, db: str, tables: list[TableName] | None = None
) -> list[TableName]:
    """The source's replicated tables (or these of them) the target lacks."""
    tables = replicated_tables(servers, db) if tables is None else tables
    if not exists(servers, Side.TARGET, db):
        return tables
    missing = catalog.missing_tables(
        servers.get("target", db), [(t.schema, t.name) for t in tables]
    )
    return [TableName(*t) for t in missing]


def _copied_tables(servers: Pool, db: str) -> list[TableName]:
    """The tables start copies, replicated and unlogged, that the target has."""
    source = servers.get("source", db)
    tables = [
        TableName(t.schema, t.name)
        for t in (*replication.replicated_tables(source), *replication.unlogged_tables(source))
    ]
    missing = set(tables_missing_on_target(servers, db, tables))
    return [t for t in tables if t not in missing]


def target_empty(servers: Pool, db: str) -> bool:
    """No table start copies holds a row on the target."""
    return not catalog.tables_with_rows(servers.get("target", db), _copied_tables(servers, db))


def empty_target(servers: Pool, db: str, *, dry_run: bool) -> Sequence[Change]:
    """Empty every table start copies on the target, in one statement (keys between them)."""
    return copy.truncate_change(
        servers.get("target", db),
        _copied_tables(servers, db),
        where=where(Side.TARGET, db),
        dry_run=dry_run,
    )


def refuse_other_moves(plan: Plan, servers: Pool) -> None:
    """Raise if the servers hold a role, publication or subscription of this move's name
    that another move made (a second plan of the same move name)."""
    found = replication.other_moves(servers, plan.move, move_id(plan), plan.databases)
    if found:
        raise PreconditionFailed(
            f"objects of another move named {plan.move!r} are on the servers: " + "; ".join(found),
            hint=replication.OTHER_MOVE_HINT,
        )


def schema_drift(servers: Pool, db: str, *, carried: set[str] | None = None) -> list[Drift]:
    """How the source's replicated tables differ on the target (its cutover schema left out).

    `carried`: the tables the replication carries, as the engine names them
    (None: not asked); a table on both sides that is not carried is drift too.
    """
    tables = [t for t in replicated_tables(servers, db) if t.schema != barrier.SCHEMA]
    if not exists(servers, Side.TARGET, db):
        return []
    source, target = both(
        lambda: drift.columns(servers.get("source", db), tables),
        lambda: drift.columns(servers.get("target", db), tables),
    )
    known = None if carried is None else {t for t in tables if str(t) in carried}
    return drift.compare(tables, source, target, carried=known)


def create_missing_tables(plan: Plan, servers: Pool, db: str, *, dry_run: bool) -> list[Change]:
    """Each replicated table the target lacks, made there as pg_dump of the source defines it."""
    # cutover's own tables (the barrier) are made by steps of their own.
    missing = [t for t in tables_missing_on_target(servers, db) if t.schema != barrier.SCHEMA]
    for table in [] if dry_run else missing:
        drift.create_table(plan.source, plan.target, db, table)
    return [
        Change(
            where(Side.TARGET, db),
            f"pg_dump --schema-only --table={quote(table)} of the source, pg_restore here",
        )
        for table in missing
    ]


def alter_columns(servers: Pool, db: str, *, dry_run: bool) -> list[Change]:
    """The columns of the moved tables made on the target as the source has them.

    A new column whose rows hold values no rule gives is filled from the
    source by key, then made NOT NULL if it is there.
    """
    source, target = servers.get("source", db), servers.get("target", db)
    at = where(Side.TARGET, db)
    changes: list[Change] = []
    for found in schema_drift(servers, db):
        changes += [change(target, s, where=at, dry_run=dry_run) for s in drift.mend(found)]
        if not drift.needs_values(found):
            continue
        assert found.source is not None
        name = found.source.name
        shape = checksum.shapes(source, [found.table]).get(found.table)
        if shape is None or not shape.key:
            raise PreconditionFailed(
                f"{quote(found.table)} has no primary key: the values of its new column "
                f"{quote(name)} cannot be copied row by row",
                hint="add the column on the target by hand with the values it needs",
            )
        key = [c.name for c in shape.key]
        if not dry_run:
            with target.transaction():
                drift.fill_column(source, target, found.table, name, key)
        changes.append(
            Change(at, f"{quote(found.table)}.{quote(name)}: the source's values, by key")
        )
        if found.source.not_null:
            changes.append(change(target, drift.not_null(found), where=at, dry_run=dry_run))
    return changes


def columns_match(servers: Pool, db: str) -> bool:
    """No column of a moved table differs (tables missing on the target aside)."""
    return not any(d.kind is not DriftKind.TABLE_MISSING for d in schema_drift(servers, db))


def pre_data_copied(servers: Pool, db: str) -> bool:
    """Every replicated table exists on the target."""
    return exists(servers, Side.TARGET, db) and not tables_missing_on_target(servers, db)


def copy_pre_data(plan: Plan, servers: Pool, db: str, *, dry_run: bool) -> Sequence[Change]:
    """pg_dump the schema; restore its pre-data part on the target, all or nothing.

    The move's own role is made on the target first: the source grants it SELECT,
    those grants restore only if it exists, and reverse replication connects as it.
    """
    archive = archive_path(plan, db)
    role = replication.object_name(plan.move)

    def own_role(*, dry_run: bool) -> list[Change]:
        return replication.create_role(
            servers.get("target"),
            role,
            marked=replication.mark(plan.move, move_id(plan)),
            where=f"target/{db}",
            dry_run=dry_run,
        )

    described = [
        Change(f"source/{db}", f"pg_dump --schema-only --format=custom > {archive}"),
        Change(f"target/{db}", "pg_restore --section=pre-data --single-transaction"),
    ]
    if dry_run:
        return [*own_role(dry_run=True), *described]
    if not exists(servers, Side.TARGET, db):
        raise PreconditionFailed(
            f"database {db} does not exist on the target",
            hint="run prepare again: create_target_database comes first",
        )
    conn = servers.get("target", db)
    # cutover's own tables (the barrier) are made by steps of their own, never by hand.
    all_tables = [t for t in replicated_tables(servers, db) if t.schema != barrier.SCHEMA]
    missing_tables = [t for t in tables_missing_on_target(servers, db) if t in all_tables]
    if all_tables and not missing_tables:  # the schema was made on the target: adopted
        return [
            *own_role(dry_run=False),
            Change(f"target/{db}", "every table of the source exists: no schema restored"),
        ]
    if len(missing_tables) < len(all_tables):
        # Part of the schema is there already: a whole restore would collide with it.
        raise PreconditionFailed(
            f"the target database {db} has {len(all_tables) - len(missing_tables)} of the "
            f"source's {len(all_tables)} tables; missing: "
            + ", ".join(str(t) for t in missing_tables),
            hint="create the missing tables on the target (pg_dump --schema-only -t ...), "
            "or drop the target database and run prepare again",
        )
    made = own_role(dry_run=False)
    missing = schema.missing_roles(servers.get("source", db), conn)
    if missing:
        raise PreconditionFailed(
            f"roles that own or are granted objects of {db} do not exist on the target: "
            + ", ".join(missing),
            hint="create them on the target (pg_dumpall --roles-only on the source "
            "lists them with their attributes), e.g. "
            + " ".join(statement("CREATE ROLE {};", r) for r in missing),
        )
    schema.dump(plan.source, db, archive)
    schema.restore_pre_data(plan.target, db, archive)
    return [*made, *described]


def _missing_post_data(plan: Plan, servers: Pool, db: str) -> list[schema.TocEntry]:
    # The move's DDL guard is the source's alone: pg_dump took its event triggers along.
    entries = schema.without_event_triggers(
        schema.toc(archive_path(plan, db), section="post-data"), ddl_guard.triggers(plan.move)
    )
    return schema.missing_on_target(servers.get("source", db), servers.get("target", db), entries)


def post_data_restored(plan: Plan, servers: Pool, db: str) -> bool:
    """The target has every key, index, constraint and trigger of the source's schema."""
    return (
        exists(servers, Side.TARGET, db)
        and archive_path(plan, db).exists()
        and not _missing_post_data(plan, servers, db)
    )


def restore_post_data(
    plan: Plan, servers: Pool, db: str, *, jobs: int, dry_run: bool
) -> Sequence[Change]:
    """Keys, indexes, constraints and triggers the target lacks, `jobs` at a time."""
    archive = archive_path(plan, db)
    if not archive.exists():
        if dry_run:
            return [Change(f"target/{db}", "pg_restore --section=post-data (what is missing)")]
        schema.dump(plan.source, db, archive)  # prepare ran elsewhere: the schema again
    entries = _missing_post_data(plan, servers, db)
    if not dry_run:
        schema.restore_entries(
            plan.target,
            db,
            archive,
            entries,
            jobs=jobs,
            index_memory=int(plan.thresholds.index_memory),
        )
    return [Change(f"target/{db}", e.line) for e in entries]


def remove_archive(plan: Plan, db: str, *, dry_run: bool) -> Sequence[Change]:
    """The schema dump kept in the state directory, deleted."""
    archive = archive_path(plan, db)
    if not archive.exists():
        return []
    if not dry_run:
        archive.unlink()
    return [Change("controller", f"rm {archive}")]


# -- materialized views ------------------------------------------------------------------------


def refresh_views(
    servers: Pool, db: str, *, unpopulated_only: bool, dry_run: bool
) -> Sequence[Change]:
    """Refresh on the target each view populated on the source (or only those not there)."""
    target = servers.get("target", db)
    wanted = matviews.to_refresh(servers.get("source", db), target)
    if unpopulated_only:
        wanted = [v for v in wanted if not v.populated]
    return matviews.refresh_all(target, wanted, where=f"target/{db}", dry_run=dry_run)


def views_on_both_sides(
    servers: Pool, db: str, *, target_exists: bool
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The views populated on the source, and those of them not populated on the target."""
    source = servers.get("source", db)
    populated = tuple(quote(v.view) for v in matviews.views(source) if v.populated)
    if not populated or not target_exists:
        return populated, populated
    missing = matviews.unpopulated(source, servers.get("target", db))
    return populated, tuple(quote(v) for v in missing)


def views_populated(servers: Pool, db: str) -> bool:
    """Every view populated on the source is populated on the target."""
    return not matviews.unpopulated(servers.get("source", db), servers.get("target", db))


# -- the fence (recorded in the move's first database) -----------------------------------------


def _fence_record(plan: Plan, servers: Pool) -> Connection:
    return servers.get("source", plan.databases[0])


def fence_source(plan: Plan, servers: Pool, *, dry_run: bool) -> Sequence[Change]:
    """No LOGIN for the roles that may write (or fence.roles), their sessions ended; recorded."""
    conn = _fence_record(plan, servers)
    roles = fence.roles_to_fence(
        conn,
        [servers.get("source", db) for db in plan.databases],
        named=plan.fence.roles,
        keep=ours(plan),
    )
    return fence.fence(conn, roles, plan.move, read_only=plan.fence.read_only, dry_run=dry_run)


def sessions_writing(plan: Plan, servers: Pool) -> list[str]:
    """Sessions of roles other than the move's that still write in the move's databases."""
    return fence.sessions_writing(
        _fence_record(plan, servers), allowed=ours(plan), databases=plan.databases
    )


def unfence_source(plan: Plan, servers: Pool, *, dry_run: bool) -> Sequence[Change]:
    """LOGIN back for every role this move fenced."""
    return fence.unfence(_fence_record(plan, servers), plan.move, dry_run=dry_run)


def fenced_roles(plan: Plan, servers: Pool) -> list[str]:
    """The roles this move's fence holds now (none where its database is not: nothing ran)."""
    if not exists(servers, Side.SOURCE, plan.databases[0]):
        return []
    # Borrowed: asked by each database's steps of a command that holds no other's session.
    with servers.borrow("source", plan.databases[0]) as conn:
        return fence.fenced_roles(conn, plan.move)


# -- sequences and large objects ---------------------------------------------------------------


SequenceStates = sequences.States  # quoted name -> state


def sequences_behind(servers: Pool, db: str) -> SequenceStates:
    """The source's state of every sequence the target is behind on, both sides read at once.

    A sequence the target has taken further (it took writes) is not behind.
    """
    source, target = servers.get("source", db), servers.get("target", db)
    return sequences.behind(*both(lambda: sequences.read(source), lambda: sequences.read(target)))


def set_sequences(
    servers: Pool, db: str, states: SequenceStates, *, dry_run: bool
) -> Sequence[Change]:
    """Set these sequences on the target, in one statement."""
    return sequences.write(servers.get("target", db), states, where=f"target/{db}", dry_run=dry_run)


def copy_sequences(servers: Pool, db: str, *, dry_run: bool) -> Sequence[Change]:
    """Set every sequence the target is behind on to the source's state.

    Only those: run ahead of the fence and again after it, the second run sets what
    moved meanwhile, and no run moves a sequence back.
    """
    return set_sequences(servers, db, sequences_behind(servers, db), dry_run=dry_run)


def large_object_roles_missing(servers: Pool, db: str) -> list[str]:
    """Roles that own or are granted large objects on the source and are not on the target."""
    return large_objects.missing_roles(servers.get("source", db), servers.get("target"))


def large_objects_copied(servers: Pool, db: str) -> bool:
    """The target holds the source's large objects: bytes, owners and privileges."""
    return large_objects.is_copied(servers.get("source", db), servers.get("target", db))


def copy_large_objects(servers: Pool, db: str, *, dry_run: bool) -> Sequence[Change]:
    """Every large object to the target, same OID; those the source lost are deleted."""
    return large_objects.copy(
        servers.get("source", db), servers.get("target", db), where=f"target/{db}", dry_run=dry_run
    )


# -- the primary-key backfill (on the source) --------------------------------------------------


class KeyBackfill:
    """One table's primary-key backfill on the source; each step renders or runs its SQL."""

    def __init__(self, servers: Pool, db: str, key: Key, *, lock_timeout: float) -> None:
        self._servers = servers
        self._db = db
        self._key = key
        self._lock_timeout = lock_timeout
        self._where = f"source/{db}"

    @property
    def _conn(self) -> Connection:
        return self._servers.get("source", self._db)

    def state(self) -> KeyState:
        """What the table has of the key: column, default, NOT NULL, index, primary key."""
        return backfill.state(self._conn, self._key)

    def pressure(self) -> Pressure:
        """Whether writers wait behind a batch, and how far a physical replica lags."""
        return backfill.pressure(self._conn, self._key.table)

    def add_column(self, *, dry_run: bool) -> Sequence[Change]:
        """The nullable column, its temporary sequence, grants and default, in one transaction."""
        return backfill.add_column(
            self._conn,
            self._key,
            lock_timeout=self._lock_timeout,
            where=self._where,
            dry_run=dry_run,
        )

    def number_rows(
        self,
        *,
        on_progress: Callable[[FillProgress], None],
        throttle: Callable[[], float],
        dry_run: bool,
    ) -> Sequence[Change]:
        """Number the rows that have no number yet, in batches of pages."""
        return backfill.number_rows(
            self._conn,
            self._key,
            lock_timeout=self._lock_timeout,
            where=self._where,
            dry_run=dry_run,
            on_progress=on_progress,
            throttle=throttle,
        )

    def set_not_null(self, *, dry_run: bool) -> Sequence[Change]:
        """NOT NULL without a long lock; the column becomes an identity."""
        return backfill.set_not_null(
            self._conn,
            self._key,
            lock_timeout=self._lock_timeout,
            where=self._where,
            dry_run=dry_run,
        )

    def build_index(self, *, dry_run: bool) -> Sequence[Change]:
        """CREATE UNIQUE INDEX CONCURRENTLY (an invalid one is rebuilt)."""
        index = self.state().index
        return backfill.build_index(
            self._conn, self._key, index_state=index, where=self._where, dry_run=dry_run
        )

    def add_primary_key(self, *, dry_run: bool) -> Sequence[Change]:
        """ADD PRIMARY KEY USING INDEX."""
        return backfill.add_primary_key(
            self._conn,
            self._key,
            lock_timeout=self._lock_timeout,
            where=self._where,
            dry_run=dry_run,
        )


def backfilled_keys(plan: Plan, servers: Pool, side: Side, db: str) -> list[Key]:
    """The keys this move's backfill added on one side (found by the move's mark)."""
    if not exists(servers, side, db):
        return []
    return backfill.marked_keys(servers.get(side, db), plan.move)


def drop_backfilled_keys(
    plan: Plan, servers: Pool, side: Side, db: str, *, dry_run: bool
) -> Sequence[Change]:
    """The backfilled columns, with their primary keys and sequences, dropped on one side."""
    if not writable(servers, side, db):
        return []
    conn = servers.get(side, db)
    changes: list[Change] = []
    for key in backfill.marked_keys(conn, plan.move):
        changes += backfill.remove(
            conn,
            key,
            lock_timeout=plan.thresholds.lock_timeout,
            where=where(side, db),
            dry_run=dry_run,
        )
    return changes
