"""cleanup: remove everything the move put on the servers, and nothing else.

1. check_no_switch_in_progress: refuse while roles are fenced and the target is
   not promoted (finish the switch first, or roll it back).
2. drop_ddl_guard: the event triggers of `ddl_guard` on the source, then their
   function, whatever the plan says now; by name (an event trigger is in no
   schema), right after the checks of both directions and before the fallback's
   cleanup, so that no later statement is refused, whoever runs it.
3. drop_subscription: on the target (before a switch, this abandons the move).
4. drop_slot: on the source, so no slot pins WAL there.
5. drop_publication: on the source (pglogical: the replication set).
6. drop_backfilled_keys: the primary keys and columns `backfill` added, on both
   sides, found by the move's mark on each column (a user's column of the same
   name carries none and is never touched).
7. drop_barrier_tables: the `_cutover` schema on both sides.
8. drop_replication_role: `cutover_<move>` on both sides, after REASSIGN OWNED and
   DROP OWNED in each database of the move.
9. remove_schema_archive: the schema dump kept in the state directory.
10. uninstall_engine: pglogical's nodes cutover made, and the extension where
    this move created it (last: the fallback's cleanup runs before this one).

Then, once for the move, `forget_previous <repoint>`: the old value each repoint
kept for a rollback (a Kubernetes Secret's companion) removed.

The source may have been made read-only: cleanup's own sessions may still write.
"""

from collections.abc import Sequence

from cutover import database
from cutover.database import Pool
from cutover.engines import reversed_plan
from cutover.engines.base import Engine
from cutover.phases import no_switch_in_progress
from cutover.plan import Plan
from cutover.repoint import KeepsPrevious, repoint_for
from cutover.steps import Change, Phase, Step, from_other_side
from cutover.types import Side

CHECK = "check_no_switch_in_progress"
DROP_DDL_GUARD = "drop_ddl_guard"


def phase(plan: Plan, servers: Pool, db: str, engine: Engine) -> Phase:
    """The cleanup steps for database `db`."""

    def on_target() -> bool:
        """The database exists on the target, and cleanup may write there."""
        return database.writable(servers, Side.TARGET, db)  # the fallback's target: the source

    def on_source() -> bool:
        return database.writable(servers, Side.SOURCE, db)

    def subscribed() -> bool:
        return database.exists(servers, Side.TARGET, db) and not engine.stopped(db)

    def stop(*, dry_run: bool) -> Sequence[Change]:
        return engine.stop(db, dry_run=dry_run) if on_target() else []

    def release_source(*, dry_run: bool) -> Sequence[Change]:
        on_source()
        return engine.release_source(db, dry_run=dry_run)

    def unprepare_source(*, dry_run: bool) -> Sequence[Change]:
        on_source()
        return engine.unprepare_source(db, dry_run=dry_run)

    def uninstall_engine(*, dry_run: bool) -> Sequence[Change]:
        on_source()
        on_target()  # the engine asks each side only where the database is
        return engine.uninstall(db, dry_run=dry_run)

    def engine_uninstalled() -> bool:
        return engine.uninstalled(db)

    def drop_backfilled_keys(*, dry_run: bool) -> Sequence[Change]:
        changes: list[Change] = []
        for side in Side:
            changes += database.drop_backfilled_keys(plan, servers, side, db, dry_run=dry_run)
        return changes

    def backfilled_keys_gone() -> bool:
        return not any(database.backfilled_keys(plan, servers, side, db) for side in Side)

    def drop_barrier_tables(*, dry_run: bool) -> Sequence[Change]:
        changes: list[Change] = []
        for side in Side:
            changes += database.drop_barrier_schema(servers, side, db, dry_run=dry_run)
        return changes

    def barrier_tables_gone() -> bool:
        return not any(database.barrier_schema_exists(servers, side, db) for side in Side)

    def drop_ddl_guard(*, dry_run: bool) -> Sequence[Change]:
        return database.drop_ddl_guard(plan, servers, db, dry_run=dry_run)

    def ddl_guard_gone() -> bool:
        return not database.ddl_guard_left(plan, servers, db)

    def archive_removed() -> bool:
        return not database.archive_path(plan, db).exists()

    return Phase(
        "cleanup",
        (
            Step(
                CHECK,
                no_switch_in_progress(plan, servers, db, engine, then="clean up"),
                attempts=1,
            ),
            Step(DROP_DDL_GUARD, drop_ddl_guard, ddl_guard_gone),
            Step("drop_subscription", stop, lambda: not subscribed()),
            Step("drop_slot", release_source, lambda: engine.source_released(db)),
            Step("drop_publication", unprepare_source, lambda: engine.source_unprepared(db)),
            Step("drop_backfilled_keys", drop_backfilled_keys, backfilled_keys_gone),
            Step("drop_barrier_tables", drop_barrier_tables, barrier_tables_gone),
            Step("drop_replication_role", engine.revoke_access, engine.access_revoked),
            Step(
                "remove_schema_archive",
                lambda *, dry_run: database.remove_archive(plan, db, dry_run=dry_run),
                archive_removed,
            ),
            Step("uninstall_engine", uninstall_engine, engine_uninstalled),
        ),
    )


def previous_values_phase(plan: Plan) -> Phase:
    """The old connection strings the repoints kept for a rollback, removed: once the
    move is cleaned up there is no rollback, and they hold the old server's password."""
    places = [repoint_for(spec, plan.databases) for spec in plan.repoint]
    return Phase(
        "cleanup",
        tuple(
            Step(
                f"forget_previous {place.name}",
                place.forget_previous,
                place.previous_forgotten,
            )
            for place in places
            if isinstance(place, KeepsPrevious)
        ),
    )


def fallback_phase(plan: Plan, back_servers: Pool, db: str, back_engine: Engine) -> Phase:
    """The cleanup of the fallback replication (the reversed move), named as the plan names."""
    back = phase(reversed_plan(plan), back_servers, db, back_engine)
    return Phase(back.name, tuple(map(from_other_side, back.steps)))


def split(phase: Phase, name: str) -> tuple[Phase, Phase]:
    """The step `name` of a cleanup phase as a phase of its own, and the phase without it.

    The command runs the checks of both directions before anything is removed,
    then the DDL guard, then the rest (see api.cleanup); a step keeps its ledger key.
    """
    return (
        Phase(phase.name, tuple(s for s in phase.steps if s.name == name)),
        Phase(phase.name, tuple(s for s in phase.steps if s.name != name)),
    )
