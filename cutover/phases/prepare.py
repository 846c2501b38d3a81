"""prepare: make both sides ready to replicate one database.

1. enable_logical_decoding: `wal_level = logical` on the source (a restart is the
   one downtime of a move, so it is never done without being asked).
2. create_target_database: the database exists on the target.
3. create_source_barrier: `_cutover.barrier`, for the switch's proof of zero lag.
4. create_replication_role: a role that may replicate and read, nothing more.
5. copy_schema: pg_dump the schema; restore its pre-data part on the target.
6. create_keys: primary keys and replica-identity indexes, which the copy needs.
7. create_target_barrier: adopted when the schema copy brought it.
8. create_publication: every replicated table of the source.
"""

from collections.abc import Sequence
from pathlib import Path

from cutover.engines.base import Engine
from cutover.errors import PreconditionFailed
from cutover.pg import admin, barrier, catalog, replication, schema
from cutover.pg.connect import Connection, Pool
from cutover.pg.ident import statement
from cutover.plan import Plan
from cutover.steps import Change, Phase, Step


def archive_path(plan: Plan, db: str) -> Path:
    """Where the schema archive of one database is kept between prepare and start."""
    return plan.state_dir / f"{replication.slot_name(plan.move, db)}.schema.dump"


def phase(plan: Plan, pool: Pool, db: str, engine: Engine) -> Phase:
    """The prepare steps for database `db`."""
    archive = archive_path(plan, db)

    def source() -> Connection:
        return pool.get("source", db)

    def target_database_exists() -> bool:
        return admin.database_exists(pool.get("target"), db)

    def target(*, dry_run: bool) -> Connection:
        if target_database_exists():
            return pool.get("target", db)
        if dry_run:  # the database comes from an earlier step: render against the server
            return pool.get("target")
        raise PreconditionFailed(
            f"database {db} does not exist on the target",
            hint="run prepare again: create_target_database comes first",
        )

    def logical_decoding_on() -> bool:
        return catalog.settings(pool.get("source"), ["wal_level"]).get("wal_level") == "logical"

    def enable_logical_decoding(*, dry_run: bool) -> Sequence[Change]:
        change = catalog.alter_system(
            pool.get("source"), "wal_level", "logical", target="source", dry_run=dry_run
        )
        if dry_run:
            return [change]
        raise PreconditionFailed(
            "wal_level is now set to logical, and takes effect when the source restarts",
            hint="restart the source at a quiet moment (the one downtime of a move), "
            "then run prepare again; on Cloud SQL set the flag cloudsql.logical_decoding=on",
        )

    def create_target_database(*, dry_run: bool) -> Sequence[Change]:
        return admin.create_database(pool.get("target"), db, target="target", dry_run=dry_run)

    def tables_missing_on_target() -> list[tuple[str, str]]:
        tables = [(t.schema, t.name) for t in replication.replicated_tables(source())]
        if not target_database_exists():
            return tables
        return catalog.missing_tables(pool.get("target", db), tables)

    def schema_copied() -> bool:
        return target_database_exists() and not tables_missing_on_target()

    def copy_schema(*, dry_run: bool) -> Sequence[Change]:
        described = [
            Change(f"source/{db}", f"pg_dump --schema-only --format=custom > {archive}"),
            Change(f"target/{db}", "pg_restore --section=pre-data --single-transaction"),
        ]
        if dry_run:
            return described
        conn = target(dry_run=False)
        missing_tables = tables_missing_on_target()
        all_tables = replication.replicated_tables(source())
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
        role = replication.object_name(plan.move)
        replication.create_role(conn, role, target=f"target/{db}", dry_run=False)
        missing = schema.missing_roles(source(), conn)
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
        return described

    def keys_created() -> bool:
        return schema_copied() and catalog.keys_match(source(), pool.get("target", db))

    def create_keys(*, dry_run: bool) -> Sequence[Change]:
        if dry_run and not (archive.exists() and schema_copied()):
            return [Change(f"target/{db}", "pg_restore primary keys, replica-identity indexes")]
        if not archive.exists():
            schema.dump(plan.source, db, archive)
        entries = schema.key_entries(source(), schema.toc(archive, section="post-data"))
        entries = schema.missing_on_target(source(), pool.get("target", db), entries)
        if not dry_run:
            schema.restore_entries(plan.target, db, archive, entries, jobs=2)
        return [Change(f"target/{db}", e.line) for e in entries]

    return Phase(
        "prepare",
        (
            Step("enable_logical_decoding", enable_logical_decoding, logical_decoding_on),
            Step("create_target_database", create_target_database, target_database_exists),
            Step(
                "create_source_barrier",
                lambda *, dry_run: barrier.create_barrier_table(
                    source(), target=f"source/{db}", dry_run=dry_run
                ),
                lambda: barrier.barrier_table_exists(source()),
            ),
            Step(
                "create_replication_role",
                engine.create_replication_role,
                engine.replication_role_ready,
            ),
            Step("copy_schema", copy_schema, schema_copied),
            Step("create_keys", create_keys, keys_created),
            Step(
                "create_target_barrier",
                lambda *, dry_run: barrier.create_barrier_table(
                    target(dry_run=dry_run), target=f"target/{db}", dry_run=dry_run
                ),
                lambda: (
                    target_database_exists()
                    and barrier.barrier_table_exists(pool.get("target", db))
                ),
            ),
            Step("create_publication", engine.create_publication, engine.publication_exists),
        ),
    )
