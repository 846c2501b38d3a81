"""rollback: after a switch with --keep-fallback, go back to the source the same way.

The switch's own steps run in the other direction (target to source, over the
fallback replication the switch started): stop writers, fence the target,
barrier, sequences, counts, promote the source. Then the source's roles get
LOGIN back, the connection strings name the source again, and the writers
start; those with a health probe must report healthy (if not: a warning, exit
3, nothing undone). A failure before the promotion undoes itself, as a switch does.
"""

import time
from collections.abc import Callable, Sequence
from functools import partial

from cutover import database
from cutover.database import Pool
from cutover.engines import reversed_plan
from cutover.engines.base import Engine
from cutover.errors import PreconditionFailed
from cutover.phases.switch import Readiness, Switch
from cutover.plan import LargeObjects, Plan
from cutover.steps import Change, Phase, Step, from_other_side
from cutover.steps import SwitchStep as S


def phase(
    plan: Plan,
    servers: Pool,
    back_servers: Pool,
    back_engine: Engine,
    *,
    on_ready: Callable[[Readiness], None] = lambda _: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Phase:
    """The rollback steps: `servers` as the plan says, `back_servers` with the sides swapped."""
    back = Switch(
        reversed_plan(plan), back_servers, back_engine, clock=clock, sleep=sleep, on_ready=on_ready
    )

    def check_fallback(*, dry_run: bool) -> Sequence[Change]:
        missing = [db for db in plan.databases if not back_engine.fallback_running(db)]
        if missing:
            raise PreconditionFailed(
                f"no fallback replication for {', '.join(missing)}: nothing keeps the "
                "source current",
                hint="rollback needs a switch made with --keep-fallback; without it, "
                "move back with a new move from target to source",
            )
        return []

    def source_unfenced() -> bool:
        return not database.fenced_roles(plan, servers)

    # The reversed move's switch, its changes named as the plan names the servers.
    back_steps = [
        Step(S.CHECK_READY, back.check_ready, attempts=1),
        Step(S.COPY_SEQUENCES_AHEAD, back.copy_sequences_ahead, attempts=1),
        Step(S.STOP_WRITERS, back.stop_writers, undo=back.start_writers, attempts=1),
        Step(S.FENCE_TARGET, back.fence_source, undo=back.unfence_source, attempts=1),
        Step(S.WAIT_FOR_BARRIER, back.wait_for_barrier, attempts=1),
        Step(S.COPY_SEQUENCES, back.copy_sequences, back.sequences_copied),
        # Replication carries none: those written on the target since the switch go back.
        *(
            [Step(S.COPY_LARGE_OBJECTS, back.copy_large_objects, back.large_objects_copied)]
            if plan.large_objects is LargeObjects.COPY
            else []
        ),
        Step(S.VERIFY_COUNTS, back.verify_counts, attempts=1),
        Step(S.PROMOTE, back.promote, back.is_promoted, point_of_no_return=True),
    ]
    back_writers = [
        Step(S.REPOINT, back.repoint, back.is_repointed if back.repoints else None),
        Step(S.START_WRITERS, back.start_writers, attempts=1),
        Step(S.RELEASE_SOURCE, back.release_source, back.is_released),
        Step(S.CHECK_WRITERS, back.check_writers, attempts=1),
    ]
    return Phase(
        "rollback",
        (
            Step(S.CHECK_FALLBACK, check_fallback, attempts=1),
            *map(from_other_side, back_steps),
            Step(
                S.UNFENCE_SOURCE, partial(database.unfence_source, plan, servers), source_unfenced
            ),
            *map(from_other_side, back_writers),
        ),
        undo_on_failure=True,
        after_interrupt=partial(reset, servers, back_servers),
    )


def reset(*pools: Pool) -> None:
    """Close the shared connections of each pool (see Phase.after_interrupt)."""
    for each in pools:
        each.reset()
