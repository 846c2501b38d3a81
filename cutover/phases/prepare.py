"""prepare: make both sides ready to replicate one database.

1. create_target_database: the database exists on the target.
2. create_source_barrier: `_cutover.barrier` on the source, for the switch's proof of zero lag.
3. create_target_barrier: the same table on the target, where the marker arrives.
"""

from collections.abc import Sequence

from cutover.errors import PreconditionFailed
from cutover.pg import admin, barrier
from cutover.pg.connect import Connection, Pool
from cutover.steps import Change, Phase, Step


def phase(pool: Pool, db: str) -> Phase:
    """The prepare steps for database `db`."""

    def target_database_exists() -> bool:
        return admin.database_exists(pool.get("target"), db)

    def create_target_database(*, dry_run: bool) -> Sequence[Change]:
        return admin.create_database(pool.get("target"), db, target="target", dry_run=dry_run)

    def target_conn(*, dry_run: bool) -> Connection:
        if target_database_exists():
            return pool.get("target", db)
        if dry_run:  # the database comes from an earlier step: render against the server
            return pool.get("target")
        raise PreconditionFailed(
            f"database {db} does not exist on the target",
            hint="run prepare again: create_target_database comes first",
        )

    def create_source_barrier(*, dry_run: bool) -> Sequence[Change]:
        conn = pool.get("source", db)
        return barrier.create_barrier_table(conn, target=f"source/{db}", dry_run=dry_run)

    def create_target_barrier(*, dry_run: bool) -> Sequence[Change]:
        conn = target_conn(dry_run=dry_run)
        return barrier.create_barrier_table(conn, target=f"target/{db}", dry_run=dry_run)

    return Phase(
        "prepare",
        (
            Step("create_target_database", create_target_database, target_database_exists),
            Step(
                "create_source_barrier",
                create_source_barrier,
                lambda: barrier.barrier_table_exists(pool.get("source", db)),
            ),
            Step(
                "create_target_barrier",
                create_target_barrier,
                lambda: (
                    target_database_exists()
                    and barrier.barrier_table_exists(pool.get("target", db))
                ),
            ),
        ),
    )
