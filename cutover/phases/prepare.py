"""prepare: make both sides ready to replicate one database.

1. enable_logical_decoding: `wal_level = logical` on the source (a restart is the
   one downtime of a move, so it is never done without being asked).
2. create_target_database: the database exists on the target.
3. create_source_barrier: `_cutover.barrier`, for the switch's proof of zero lag.
4. install_engine: what the engine needs on the source (pglogical: its extension,
   which the schema copy brings to the target).
5. create_replication_role: a role that may replicate and read, nothing more.
6. copy_schema: pg_dump the schema; restore its pre-data part on the target
   (tables, types, functions: no index yet, so the copy fills bare tables).
7. create_target_barrier: adopted when the schema copy brought it.
8. create_publication: every replicated table of the source (pglogical: a
   replication set of the tables and sequences, on the source's node).
"""

import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from cutover.engines.base import Engine
from cutover.errors import ConnectionFailed, PreconditionFailed, StepFailed
from cutover.pg import admin, barrier, catalog, replication, schema, tools
from cutover.pg.connect import Connection, Pool
from cutover.pg.ident import statement
from cutover.plan import Plan
from cutover.steps import Change, Phase, Step


def archive_path(plan: Plan, db: str) -> Path:
    """Where the schema archive of one database is kept between prepare and start."""
    return plan.state_dir / f"{replication.slot_name(plan.move, db)}.schema.dump"


class Prepare:
    """The prepare of one database: each method is a step, or a step's probe."""

    def __init__(
        self, plan: Plan, pool: Pool, db: str, *, restart: bool, restart_timeout: float
    ) -> None:
        self.plan = plan
        self.pool = pool
        self.db = db
        self.archive = archive_path(plan, db)
        self.restart = restart
        self.restart_timeout = restart_timeout

    def source(self) -> Connection:
        """The source database."""
        return self.pool.get("source", self.db)

    def target_database_exists(self) -> bool:
        """Whether the database exists on the target."""
        return admin.database_exists(self.pool.get("target"), self.db)

    def target(self, *, dry_run: bool) -> Connection:
        """The target database (in a dry run before it exists: the target server)."""
        if self.target_database_exists():
            return self.pool.get("target", self.db)
        if dry_run:  # the database comes from an earlier step: render against the server
            return self.pool.get("target")
        raise PreconditionFailed(
            f"database {self.db} does not exist on the target",
            hint="run prepare again: create_target_database comes first",
        )

    def logical_decoding_on(self) -> bool:
        """wal_level = logical on the source."""
        settings = catalog.settings(self.pool.get("source"), ["wal_level"])
        return settings.get("wal_level") == "logical"

    def enable_logical_decoding(self, *, dry_run: bool) -> Sequence[Change]:
        """ALTER SYSTEM; then a restart, only when asked for and the plan says how."""
        changes = [
            catalog.alter_system(
                self.pool.get("source"), "wal_level", "logical", where="source", dry_run=dry_run
            )
        ]
        command = self.plan.source.restart
        if self.restart and command:
            changes.append(Change("source", " ".join(command)))
        if dry_run:
            return changes
        if not (self.restart and command):
            raise PreconditionFailed(
                "wal_level is now set to logical, and takes effect when the source restarts",
                hint="restart the source at a quiet moment (the one downtime of a move), then "
                "run prepare again; or give source.restart in the plan and run prepare "
                "--restart; on Cloud SQL set the flag cloudsql.logical_decoding=on",
            )
        self.pool.close()  # the restart ends every session
        tools.run_command(command, timeout=self.restart_timeout, what="the source's restart")
        self._wait_for_logical_decoding()
        return changes

    def _wait_for_logical_decoding(self) -> None:
        deadline = time.monotonic() + self.restart_timeout
        while True:
            try:
                if self.logical_decoding_on():
                    return
            except ConnectionFailed:
                self.pool.close()
            if time.monotonic() > deadline:
                raise StepFailed(
                    "after its restart the source does not answer with wal_level = logical",
                    hint="check the restart command and the server's log",
                )
            time.sleep(0.5)

    def create_target_database(self, *, dry_run: bool) -> Sequence[Change]:
        """CREATE DATABASE on the target."""
        return admin.create_database(
            self.pool.get("target"), self.db, where="target", dry_run=dry_run
        )

    def create_barrier(self, side: str, *, dry_run: bool) -> Sequence[Change]:
        """`_cutover.barrier` on one side."""
        conn = self.source() if side == "source" else self.target(dry_run=dry_run)
        return barrier.create_barrier_table(conn, where=f"{side}/{self.db}", dry_run=dry_run)

    def barrier_exists(self, side: str) -> bool:
        """Whether `_cutover.barrier` exists on one side."""
        if side == "target" and not self.target_database_exists():
            return False
        return barrier.barrier_table_exists(self.pool.get(side, self.db))

    def tables_missing_on_target(self) -> list[tuple[str, str]]:
        """The source's replicated tables the target lacks."""
        tables = [(t.schema, t.name) for t in replication.replicated_tables(self.source())]
        if not self.target_database_exists():
            return tables
        return catalog.missing_tables(self.pool.get("target", self.db), tables)

    def schema_copied(self) -> bool:
        """Every replicated table exists on the target."""
        return self.target_database_exists() and not self.tables_missing_on_target()

    def copy_schema(self, *, dry_run: bool) -> Sequence[Change]:
        """pg_dump the schema; restore its pre-data part on the target, all or nothing."""
        db, archive = self.db, self.archive
        described = [
            Change(f"source/{db}", f"pg_dump --schema-only --format=custom > {archive}"),
            Change(f"target/{db}", "pg_restore --section=pre-data --single-transaction"),
        ]
        if dry_run:
            return described
        conn = self.target(dry_run=False)
        missing_tables = self.tables_missing_on_target()
        all_tables = replication.replicated_tables(self.source())
        if len(missing_tables) < len(all_tables):
            # Part of the schema is there already: a whole restore would collide with it.
            raise PreconditionFailed(
                f"the target database {db} has {len(all_tables) - len(missing_tables)} of the "
                f"source's {len(all_tables)} tables; missing: "
                + ", ".join(replication.display(t) for t in missing_tables),
                hint="create the missing tables on the target (pg_dump --schema-only -t ...), "
                "or drop the target database and run prepare again",
            )
        # The move's own role is granted SELECT on the source: the target needs it too
        # for those grants to restore, and reverse replication connects as it later.
        role = replication.object_name(self.plan.move)
        replication.create_role(conn, role, where=f"target/{db}", dry_run=False)
        missing = schema.missing_roles(self.source(), conn)
        if missing:
            raise PreconditionFailed(
                f"roles that own or are granted objects of {db} do not exist on the target: "
                + ", ".join(missing),
                hint="create them on the target (pg_dumpall --roles-only on the source "
                "lists them with their attributes), e.g. "
                + " ".join(statement("CREATE ROLE {};", r) for r in missing),
            )
        schema.dump(self.plan.source, db, archive)
        schema.restore_pre_data(self.plan.target, db, archive)
        return described


def phase(
    plan: Plan,
    pool: Pool,
    db: str,
    engine: Engine,
    *,
    restart: bool = False,
    restart_timeout: float = 300.0,
) -> Phase:
    """The prepare steps for database `db`; with `restart`, the source may be restarted."""
    prepare = Prepare(plan, pool, db, restart=restart, restart_timeout=restart_timeout)
    return Phase(
        "prepare",
        (
            Step(
                "enable_logical_decoding",
                prepare.enable_logical_decoding,
                prepare.logical_decoding_on,
                attempts=1,
            ),
            Step(
                "create_target_database",
                prepare.create_target_database,
                prepare.target_database_exists,
            ),
            Step(
                "create_source_barrier",
                partial(prepare.create_barrier, "source"),
                partial(prepare.barrier_exists, "source"),
            ),
            Step("install_engine", engine.install, engine.installed),
            Step(
                "create_replication_role",
                engine.create_replication_role,
                engine.replication_role_ready,
            ),
            Step("copy_schema", prepare.copy_schema, prepare.schema_copied),
            Step(
                "create_target_barrier",
                partial(prepare.create_barrier, "target"),
                partial(prepare.barrier_exists, "target"),
            ),
            Step("create_publication", engine.create_publication, engine.publication_exists),
        ),
    )
