"""rollback: after a switch with --keep-fallback, go back to the source the same way.

The switch's own steps run in the other direction (target to source, over the
fallback replication the switch started): stop writers, fence the target,
barrier, sequences, counts, promote the source. Then the source's roles get
LOGIN back, the connection strings name the source again, and the writers
start. A failure before the promotion undoes itself, as a switch does.
"""

import time
from collections.abc import Callable, Sequence

from cutover.engines import reversed_plan
from cutover.engines.base import Engine
from cutover.errors import PreconditionFailed
from cutover.pg import fence
from cutover.pg.connect import Pool
from cutover.phases.switch import Switch
from cutover.plan import Plan
from cutover.steps import Change, Phase, Step


def phase(
    plan: Plan,
    pool: Pool,
    back_pool: Pool,
    back_engines: dict[str, Engine],
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Phase:
    """The rollback steps: `pool` as the plan says, `back_pool` with the sides swapped."""
    back = Switch(reversed_plan(plan), back_pool, back_engines, clock=clock, sleep=sleep)

    def check_fallback(*, dry_run: bool) -> Sequence[Change]:
        missing = [db for db, e in back_engines.items() if not e.subscription_exists()]
        if missing:
            raise PreconditionFailed(
                f"no fallback replication for {', '.join(missing)}: nothing keeps the "
                "source current",
                hint="rollback needs a switch made with --keep-fallback; without it, "
                "move back with a new move from target to source",
            )
        return []

    def unfence_source(*, dry_run: bool) -> Sequence[Change]:
        return fence.unfence(pool.get("source", plan.databases[0]), plan.move, dry_run=dry_run)

    return Phase(
        "rollback",
        (
            Step("check_fallback", check_fallback, attempts=1),
            Step("check_ready", back.check_ready, attempts=1),
            Step("stop_writers", back.stop_writers, undo=back.start_writers, attempts=1),
            Step("fence_target", back.fence_source, undo=back.unfence_source, attempts=1),
            Step("wait_for_barrier", back.wait_for_barrier, attempts=1),
            Step("copy_sequences", back.copy_sequences, back.sequences_copied),
            Step("verify_counts", back.verify_counts, attempts=1),
            Step("promote", back.promote, back.is_promoted, point_of_no_return=True),
            Step(
                "unfence_source",
                unfence_source,
                lambda: not fence.fenced_roles(pool.get("source", plan.databases[0]), plan.move),
            ),
            Step("repoint", back.repoint, back.is_repointed if back.repoints else None),
            Step("start_writers", back.start_writers, attempts=1),
        ),
        undo_on_failure=True,
    )
