"""start: replicate one database, and finish the target's schema once the data is in.

1. create_subscription: the target subscribes; the initial copy begins.
2. wait_for_copy: every table copied and streaming (only with --wait).
3. restore_post_data: the other indexes, constraints and triggers, built after
   the copy because building them once is faster than maintaining them during it.
"""

import time
from collections.abc import Callable, Sequence

from cutover.engines.base import CopyProgress, Engine
from cutover.errors import PreconditionFailed, StepFailed
from cutover.pg import admin, catalog, replication, schema
from cutover.pg.connect import Pool
from cutover.phases.prepare import archive_path
from cutover.plan import Plan
from cutover.steps import Change, Phase, Step

POLL_SECONDS = 1.0


def phase(
    plan: Plan,
    pool: Pool,
    db: str,
    engine: Engine,
    *,
    wait: bool,
    on_progress: Callable[[CopyProgress], None] = lambda _: None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Phase:
    """The start steps for database `db`; without `wait` only the subscription is made."""
    archive = archive_path(plan, db)
    subscription = replication.object_name(plan.move)

    def subscribed() -> bool:
        return admin.database_exists(pool.get("target"), db) and engine.subscription_exists()

    def create_subscription(*, dry_run: bool) -> Sequence[Change]:
        if not admin.database_exists(pool.get("target"), db) or not engine.publication_exists():
            raise PreconditionFailed(
                f"{db} is not prepared for this move (no target database or no publication)",
                hint="run `cutover prepare` until it finishes, then start again",
            )
        return engine.create_subscription(dry_run=dry_run)

    def copied() -> bool:
        return subscribed() and engine.progress().done

    def wait_for_copy(*, dry_run: bool) -> Sequence[Change]:
        if dry_run:
            return [Change(f"target/{db}", "wait until every table is copied and streaming")]
        target = pool.get("target", db)
        errors_before = catalog.subscription_errors(target, subscription)
        deadline = clock() + plan.thresholds.copy_timeout
        while True:
            progress = engine.progress()
            on_progress(progress)
            if progress.done:
                return []
            if not progress.tables:
                raise StepFailed(
                    f"the subscription for {db} carries no table",
                    hint="the publication is empty or was replaced; see `cutover check`",
                )
            if catalog.subscription_errors(target, subscription) > errors_before:
                raise StepFailed(
                    f"the subscription's workers report errors while copying {db}",
                    hint="the target server's log says why (a missing role, a "
                    "constraint, disk); fix it and run start --wait again: it resumes",
                )
            if clock() > deadline:
                raise StepFailed(
                    f"the initial copy of {db} did not finish within "
                    f"{plan.thresholds.copy_timeout:g} s ({progress.ready} of "
                    f"{len(progress.tables)} tables ready)",
                    hint="replication goes on; run `cutover start --wait` again to keep "
                    "following it, or raise thresholds.copy_timeout",
                )
            sleep(POLL_SECONDS)

    def missing_post_data() -> list[schema.TocEntry]:
        entries = schema.toc(archive, section="post-data")
        return schema.missing_on_target(pool.get("source", db), pool.get("target", db), entries)

    def restore_post_data(*, dry_run: bool) -> Sequence[Change]:
        if not archive.exists():
            if dry_run:
                return [Change(f"target/{db}", "pg_restore --section=post-data (what is missing)")]
            schema.dump(plan.source, db, archive)  # prepare ran elsewhere: the schema again
        entries = missing_post_data()
        if not dry_run:
            schema.restore_entries(plan.target, db, archive, entries, jobs=2)
        return [Change(f"target/{db}", e.line) for e in entries]

    steps = [Step("create_subscription", create_subscription, subscribed)]
    if wait:
        steps += [
            Step("wait_for_copy", wait_for_copy, copied, attempts=1),
            Step(
                "restore_post_data",
                restore_post_data,
                lambda: archive.exists() and not missing_post_data(),
            ),
        ]
    return Phase("start", tuple(steps))
