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

An engine whose target has its keys before the copy (`keys_before_copy`:
pglogical applies changes as soon as its copy commits) restores post-data
first, and its copy_data waits for that copy. An engine that copies the
schema itself (`copies_schema`) has no restore_post_data step, and makes the
target database itself. On a target that takes no write before its promotion
(`target_read_only_until_promote`) the views are refreshed by the switch only.

`start --recopy` runs the recopy phase first, for a move whose changes were
lost to the target (its slot dropped or invalidated): the subscription and
the slot are dropped and the target's tables emptied, so that start copies
again from a new slot.
"""

import time
from collections.abc import Callable, Sequence
from functools import partial

from cutover import database, wait
from cutover.database import Pool
from cutover.engines.base import Engine
from cutover.errors import PreconditionFailed, StepFailed
from cutover.phases import no_switch_in_progress
from cutover.plan import Plan
from cutover.steps import Change, Phase, Step
from cutover.types import Lag, Side, SyncProgress

CATCHUP_FIRST_POLL_SECONDS = 0.02
CATCHUP_POLL_SECONDS = 0.2
CONNECT_SECONDS = 60.0  # an apply worker that has not connected by then never will by itself

COPY_DATA = "copy_data"  # the step that fills the target's tables: `check` asks the ledger
RECOPY_HINT = (
    "run `cutover start --recopy`: it drops the subscription and the slot, empties the "
    "target's tables and copies them anew (the source is only read)"
)


def require_prepared(servers: Pool, db: str, engine: Engine) -> None:
    """Raise unless prepare made the target database (unless the engine makes it) and
    readied the source."""
    target_ready = engine.traits.copies_schema or database.exists(servers, Side.TARGET, db)
    if not target_ready or not engine.source_prepared(db):
        raise PreconditionFailed(
            f"{db} is not prepared for this move (no target database or no publication)",
            hint="run `cutover prepare` until it finishes, then start again",
        )


def recopy_phase(plan: Plan, servers: Pool, db: str, engine: Engine) -> Phase:
    """What a copy anew starts from: no subscription, no slot, the target's tables empty."""

    def stopped() -> bool:
        return not database.exists(servers, Side.TARGET, db) or engine.stopped(db)

    return Phase(
        "recopy",
        (
            Step(
                "check_no_switch_in_progress",
                no_switch_in_progress(plan, servers, db, engine, then="copy anew"),
                attempts=1,
            ),
            Step("drop_subscription", partial(engine.stop, db), stopped),
            Step(
                "drop_slot", partial(engine.release_source, db), partial(engine.source_released, db)
            ),
            Step(
                "empty_target_tables",
                partial(database.empty_target, servers, db),
                partial(database.target_empty, servers, db),
            ),
        ),
    )


def _not_connected(servers: Pool, db: str) -> StepFailed:
    """Why a subscription has not connected: every replication worker of the target busy
    (the target's log says so, and nothing else does), or what its log should tell."""
    said = f"the subscription of {db} has not connected to the source within {CONNECT_SECONDS:g} s"
    limit, running = database.replication_workers(servers)
    if running >= limit:
        return StepFailed(
            f"{said}: all {limit} logical replication workers of the target are busy "
            f"({running} running for subscriptions)",
            hint="raise max_logical_replication_workers on the target (and max_worker_processes "
            "with it; both take a restart), or end subscriptions it no longer needs; start "
            "resumes",
        )
    return StepFailed(
        said,
        hint="the target server's log says why (the source's address as the target sees it: "
        "source.replication_host; pg_hba.conf); start resumes",
    )


def phase(
    plan: Plan,
    servers: Pool,
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
    limits = plan.thresholds

    def sync_started() -> bool:
        made = engine.traits.copies_schema or database.exists(servers, Side.TARGET, db)
        return made and engine.initial_sync_started(db)

    def copy_data(*, dry_run: bool) -> Sequence[Change]:
        require_prepared(servers, db, engine)
        deadline = clock() + limits.copy_timeout
        return engine.initial_sync(
            db, jobs=jobs, deadline=deadline, on_progress=on_progress, dry_run=dry_run
        )

    def restore_post_data(*, dry_run: bool) -> Sequence[Change]:
        require_prepared(servers, db, engine)
        return database.restore_post_data(plan, servers, db, jobs=jobs, dry_run=dry_run)

    def close_enough(lag: Lag) -> bool:
        """Streaming, and less than max_switch_lag behind the source's current WAL."""
        return lag.connected and lag.bytes <= limits.max_switch_lag

    def caught_up() -> bool:
        if not (sync_started() and engine.streaming(db)):
            return False
        lag = engine.lag(db)
        return lag is not None and close_enough(lag) and engine.progress(db).done

    def wait_for_catchup(*, dry_run: bool) -> Sequence[Change]:
        if dry_run:
            return [Change(f"target/{db}", "wait until the target is caught up")]
        errors_before = engine.apply_errors(db)
        connect_by = clock() + CONNECT_SECONDS
        woken: list[Change] = []

        def arrived() -> bool:
            lag = engine.lag(db)
            if lag is None or lag.lost:
                raise StepFailed(
                    f"the move's replication slot for {db} is gone or invalidated: the "
                    "changes since are lost to the target",
                    hint=RECOPY_HINT,
                )
            progress = engine.progress(db)
            if progress.done:
                on_lag(lag.bytes)
                if close_enough(lag):
                    return True
            else:  # the engine's own copy goes on (a start that resumed while it ran)
                on_progress(progress)
            if not lag.connected and not woken:
                # pglogical starts a worker that failed (a cut connection) only when its
                # manager wakes, up to 3 min later: asked once, it starts within 10 s. The
                # engines whose workers restart by themselves have nothing to do (no I/O).
                woken.extend(engine.resume_apply(db, dry_run=False))
            if not lag.connected and clock() > connect_by:
                raise _not_connected(servers, db)
            if engine.apply_errors(db) > errors_before:
                raise StepFailed(
                    f"the subscription's workers report errors while applying changes to {db}",
                    hint="the target server's log says why (a missing role, a constraint, "
                    "disk); fix it and run start again: it resumes",
                )
            return False

        wait.until(
            arrived,
            timeout=limits.copy_timeout,
            interval=CATCHUP_FIRST_POLL_SECONDS,  # often caught up within a few looks
            backoff=1.5,
            max_interval=CATCHUP_POLL_SECONDS,
            on_tick=partial(engine.heartbeat, db),
            what=f"the target of {db} did not catch up with the source",
            hint="replication goes on; run `cutover start` again to keep following it, "
            "or raise thresholds.copy_timeout",
            clock=clock,
            sleep=sleep,
        )
        return woken

    def post_data_restored() -> bool:
        ready = sync_started() if not engine.traits.keys_before_copy else True
        return ready and database.post_data_restored(plan, servers, db)

    copy = Step(COPY_DATA, copy_data, sync_started, attempts=1)
    post = Step("restore_post_data", restore_post_data, post_data_restored)
    if engine.traits.copies_schema:
        first: tuple[Step, ...] = (copy,)
    elif engine.traits.keys_before_copy:
        first = (post, copy)
    else:
        first = (copy, post)
    views: tuple[Step, ...] = ()
    if not engine.traits.target_read_only_until_promote:
        views = (
            Step(
                "refresh_materialized_views",
                partial(database.refresh_views, servers, db, unpopulated_only=True),
                partial(database.views_populated, servers, db),
            ),
        )
    return Phase(
        "start",
        (
            *first,
            Step("start_streaming", partial(engine.stream, db), partial(engine.streaming, db)),
            Step("wait_for_catchup", wait_for_catchup, caught_up, attempts=1),
            *views,
        ),
    )
