"""cleanup: remove everything the move put on the servers, and nothing else.

1. check_no_switch_in_progress: refuse while roles are fenced and the target is
   not promoted (finish the switch first, or roll it back).
2. drop_subscription: on the target (before a switch, this abandons the move).
3. drop_slot: on the source, so no slot pins WAL there.
4. drop_publication: on the source (pglogical: the replication set).
5. drop_backfilled_keys: the primary keys and columns `backfill` added, on both
   sides, found by the move's mark on each column (a user's column of the same
   name carries none and is never touched).
6. drop_barrier_tables: the `_cutover` schema on both sides.
7. drop_replication_role: `cutover_<move>` on both sides, after REASSIGN OWNED and
   DROP OWNED in each database of the move.
8. remove_schema_archive: the schema dump kept in the state directory.
9. uninstall_engine: pglogical's nodes cutover made, and the extension where
   this move created it (last: the fallback's cleanup runs before this one).

The source may have been made read-only: cleanup's own sessions may still write.
"""

from collections.abc import Sequence

from cutover.engines.base import Engine
from cutover.errors import PreconditionFailed
from cutover.pg import admin, backfill, barrier, fence, replication
from cutover.pg.connect import Connection, Pool
from cutover.pg.ident import quote
from cutover.phases.prepare import archive_path
from cutover.plan import Plan
from cutover.steps import Change, Phase, Step


def phase(plan: Plan, pool: Pool, db: str, engine: Engine) -> Phase:
    """The cleanup steps for database `db`."""
    name = replication.object_name(plan.move)
    archive = archive_path(plan, db)

    def source() -> Connection:
        conn = pool.get("source", db)
        admin.allow_writes(conn)
        return conn

    def target() -> Connection | None:
        if not admin.database_exists(pool.get("target"), db):
            return None
        conn = pool.get("target", db)
        admin.allow_writes(conn)  # the fallback's target is the old source
        return conn

    def subscribed() -> bool:
        return target() is not None and engine.subscription_exists()

    def check_no_switch_in_progress(*, dry_run: bool) -> Sequence[Change]:
        fenced = fence.fenced_roles(pool.get("source", plan.databases[0]), plan.move)
        if fenced and subscribed():
            raise PreconditionFailed(
                f"a switch of this move is half done: {', '.join(fenced)} are fenced on the "
                "source and the target is not promoted",
                hint="run `cutover switch` again to finish it, or `cutover rollback`; "
                "then clean up",
            )
        return []

    def drop_subscription(*, dry_run: bool) -> Sequence[Change]:
        return [] if target() is None else engine.drop_subscription(dry_run=dry_run)

    def drop_slot(*, dry_run: bool) -> Sequence[Change]:
        source()
        return engine.drop_slot(dry_run=dry_run)

    def drop_publication(*, dry_run: bool) -> Sequence[Change]:
        source()
        return engine.drop_publication(dry_run=dry_run)

    def uninstall_engine(*, dry_run: bool) -> Sequence[Change]:
        source()
        return [] if target() is None else engine.uninstall(dry_run=dry_run)

    def engine_uninstalled() -> bool:
        return target() is None or engine.uninstalled()

    def sides() -> list[tuple[str, Connection]]:
        """The database on the source, and on the target when it exists there."""
        conn = target()
        return [("source", source())] + ([("target", conn)] if conn is not None else [])

    def drop_backfilled_keys(*, dry_run: bool) -> Sequence[Change]:
        changes = []
        for label, conn in sides():
            for key in backfill.marked_keys(conn, plan.move):
                if not dry_run:
                    backfill.drop(conn, key, lock_timeout=plan.thresholds.lock_timeout)
                changes.append(
                    Change(
                        f"{label}/{db}",
                        f"ALTER TABLE {quote(key.table)} DROP COLUMN {quote(key.column)} "
                        "(with its primary key and sequence)",
                    )
                )
        return changes

    def backfilled_keys_gone() -> bool:
        return not any(backfill.marked_keys(conn, plan.move) for _, conn in sides())

    def drop_barrier_tables(*, dry_run: bool) -> Sequence[Change]:
        changes = []
        for label, conn in sides():
            changes += barrier.drop_schema(conn, where=f"{label}/{db}", dry_run=dry_run)
        return changes

    def barrier_tables_gone() -> bool:
        return not any(barrier.schema_exists(conn) for _, conn in sides())

    def drop_replication_role(*, dry_run: bool) -> Sequence[Change]:
        changes = []
        for label, server in (("source", plan.source), ("target", plan.target)):
            conns = [pool.get(label, d) for d in plan.databases if _has_database(pool, label, d)]
            for conn in conns:
                admin.allow_writes(conn)
            changes += replication.drop_role(
                conns, pool.get(label), name, heir=server.user, where=label, dry_run=dry_run
            )
        return changes

    def role_gone() -> bool:
        return not any(
            replication.role_exists(pool.get(label), name) for label in ("source", "target")
        )

    def remove_schema_archive(*, dry_run: bool) -> Sequence[Change]:
        if not archive.exists():
            return []
        if not dry_run:
            archive.unlink()
        return [Change("controller", f"rm {archive}")]

    return Phase(
        "cleanup",
        (
            Step("check_no_switch_in_progress", check_no_switch_in_progress, attempts=1),
            Step("drop_subscription", drop_subscription, lambda: not subscribed()),
            Step("drop_slot", drop_slot, lambda: engine.slot() is None),
            Step("drop_publication", drop_publication, lambda: not engine.publication_exists()),
            Step("drop_backfilled_keys", drop_backfilled_keys, backfilled_keys_gone),
            Step("drop_barrier_tables", drop_barrier_tables, barrier_tables_gone),
            Step("drop_replication_role", drop_replication_role, role_gone),
            Step("remove_schema_archive", remove_schema_archive, lambda: not archive.exists()),
            Step("uninstall_engine", uninstall_engine, engine_uninstalled),
        ),
    )


def _has_database(pool: Pool, label: str, db: str) -> bool:
    return admin.database_exists(pool.get(label), db)
