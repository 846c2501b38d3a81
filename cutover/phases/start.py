"""start: copy one database, finish the target's schema, then stream the changes.

1. copy_data: the move's slot is created and every table copied in the snapshot
   it starts from, `jobs` tables (or parts of a large one) at a time; then the
   subscription is made, disabled.
2. restore_post_data: primary keys, the other indexes, constraints and
   triggers, `jobs` at a time: building them once is faster than maintaining
   them row by row during the copy.
3. start_streaming: the subscription applies the changes the source made
   since the snapshot; the keys exist by now, so each is applied by index.
4. wait_for_catchup: until every table is ready and the target is within
   `thresholds.max_switch_lag`.
5. refresh_materialized_views: each view populated on the source is
   populated on the target too (replication carries no view's rows).

An engine that copies with its own subscription (pglogical) applies changes as
soon as its copy commits: for it restore_post_data comes first, and
copy_data waits for that copy.
"""

import time
from collections.abc import Callable, Sequence
from functools import partial

from cutover.engines.base import Engine
from cutover.errors import PreconditionFailed, StepFailed
from cutover.pg import admin, catalog, matviews, replication, schema
from cutover.pg.connect import Pool
from cutover.pg.replication import SlotState
from cutover.phases.prepare import archive_path
from cutover.plan import Plan
from cutover.steps import Change, Phase, Step
from cutover.types import SyncProgress

CATCHUP_POLL_SECONDS = 0.2
CONNECT_SECONDS = 60.0  # an apply worker that has not connected by then never will by itself


def require_prepared(pool: Pool, db: str, engine: Engine) -> None:
    """Raise unless prepare made the target database and the publication."""
    if not admin.database_exists(pool.get("target"), db) or not engine.publication_exists():
        raise PreconditionFailed(
            f"{db} is not prepared for this move (no target database or no publication)",
            hint="run `cutover prepare` until it finishes, then start again",
        )


def refresh_materialized_views(pool: Pool, db: str, *, dry_run: bool) -> Sequence[Change]:
    """Populate on the target each view that is populated on the source and not there."""
    target = pool.get("target", db)
    wanted = matviews.to_refresh(pool.get("source", db), target)
    return matviews.refresh_all(
        target, [v for v in wanted if not v.populated], where=f"target/{db}", dry_run=dry_run
    )


def views_populated(pool: Pool, db: str) -> bool:
    """Every view populated on the source is populated on the target."""
    return not matviews.unpopulated(pool.get("source", db), pool.get("target", db))


def phase(
    plan: Plan,
    pool: Pool,
    db: str,
    engine: Engine,
    *,
    jobs: int = 2,
    on_progress: Callable[[SyncProgress], None] = lambda _: None,
    on_lag: Callable[[int], None] = lambda _: None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Phase:
    """The start steps for database `db`, copying and indexing with `jobs` jobs."""
    archive = archive_path(plan, db)
    subscription = replication.object_name(plan.move)
    index_memory = int(plan.thresholds.index_memory)

    def subscribed() -> bool:
        return admin.database_exists(pool.get("target"), db) and engine.subscription_exists()

    def copy_data(*, dry_run: bool) -> Sequence[Change]:
        require_prepared(pool, db, engine)
        deadline = clock() + plan.thresholds.copy_timeout
        return engine.copy_data(
            jobs=jobs, deadline=deadline, on_progress=on_progress, dry_run=dry_run
        )

    def missing_post_data() -> list[schema.TocEntry]:
        entries = schema.toc(archive, section="post-data")
        return schema.missing_on_target(pool.get("source", db), pool.get("target", db), entries)

    def restore_post_data(*, dry_run: bool) -> Sequence[Change]:
        require_prepared(pool, db, engine)
        if not archive.exists():
            if dry_run:
                return [Change(f"target/{db}", "pg_restore --section=post-data (what is missing)")]
            schema.dump(plan.source, db, archive)  # prepare ran elsewhere: the schema again
        entries = missing_post_data()
        if not dry_run:
            schema.restore_entries(
                plan.target, db, archive, entries, jobs=jobs, index_memory=index_memory
            )
        return [Change(f"target/{db}", e.line) for e in entries]

    def close_enough(slot: SlotState) -> bool:
        """Streaming, and less than max_switch_lag behind the source's current WAL."""
        return slot.active and slot.lag_bytes <= plan.thresholds.max_switch_lag

    def caught_up() -> bool:
        slot = engine.slot() if subscribed() and engine.streaming() else None
        return slot is not None and close_enough(slot) and engine.progress().done

    def wait_for_catchup(*, dry_run: bool) -> Sequence[Change]:
        if dry_run:
            return [Change(f"target/{db}", "wait until the target is caught up")]
        target = pool.get("target", db)
        errors_before = catalog.subscription_errors(target, subscription)
        started = clock()
        deadline = started + plan.thresholds.copy_timeout
        while True:
            slot = engine.slot()
            if slot is None or slot.wal_status == "lost":
                raise StepFailed(
                    f"the move's replication slot for {db} is gone or invalidated",
                    hint="see `cutover status`; drop the subscription on the target and "
                    "run start again to copy anew",
                )
            progress = engine.progress()
            if progress.done:
                on_lag(slot.lag_bytes)
                if close_enough(slot):
                    return []
            else:  # the engine's own copy goes on (a start that resumed while it ran)
                on_progress(progress)
            engine.heartbeat()
            if not slot.active and clock() > started + CONNECT_SECONDS:
                raise StepFailed(
                    f"the subscription of {db} has not connected to the source "
                    f"within {CONNECT_SECONDS:g} s",
                    hint="the target server's log says why (the source's address as the "
                    "target sees it: source.replication_host; pg_hba.conf); start resumes",
                )
            if catalog.subscription_errors(target, subscription) > errors_before:
                raise StepFailed(
                    f"the subscription's workers report errors while applying changes to {db}",
                    hint="the target server's log says why (a missing role, a constraint, "
                    "disk); fix it and run start again: it resumes",
                )
            if clock() > deadline:
                raise StepFailed(
                    f"the target of {db} is still {slot.lag_bytes} bytes behind after "
                    f"{plan.thresholds.copy_timeout:g} s",
                    hint="replication goes on; run `cutover start` again to keep following "
                    "it, or raise thresholds.copy_timeout",
                )
            sleep(CATCHUP_POLL_SECONDS)

    def post_data_restored() -> bool:
        ready = (
            subscribed()
            if not engine.keys_before_copy
            else admin.database_exists(pool.get("target"), db)
        )
        return ready and archive.exists() and not missing_post_data()

    steps = [
        Step("copy_data", copy_data, subscribed, attempts=1),
        Step("restore_post_data", restore_post_data, post_data_restored),
    ]
    return Phase(
        "start",
        (
            *(reversed(steps) if engine.keys_before_copy else steps),
            Step("start_streaming", engine.start_streaming, engine.streaming),
            Step("wait_for_catchup", wait_for_catchup, caught_up, attempts=1),
            Step(
                "refresh_materialized_views",
                partial(refresh_materialized_views, pool, db),
                partial(views_populated, pool, db),
            ),
        ),
    )
