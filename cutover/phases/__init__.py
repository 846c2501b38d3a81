"""The phases of a move, each a tuple of named steps that reads like its runbook."""

from collections.abc import Callable, Sequence

from cutover import database
from cutover.database import Pool
from cutover.engines.base import Engine
from cutover.errors import PreconditionFailed
from cutover.plan import Plan
from cutover.steps import Change
from cutover.types import Side


def no_switch_in_progress(
    plan: Plan, servers: Pool, db: str, engine: Engine, *, then: str
) -> Callable[..., Sequence[Change]]:
    """A step that refuses while a switch is half done: roles fenced, the target not promoted.

    `then` is what to do once the switch is finished or given up.
    """

    def check(*, dry_run: bool) -> Sequence[Change]:
        fenced = database.fenced_roles(plan, servers)
        if fenced and database.exists(servers, Side.TARGET, db) and not engine.promoted(db):
            raise PreconditionFailed(
                f"a switch of this move is half done: {', '.join(fenced)} are fenced on the "
                "source and the target is not promoted",
                hint="run `cutover switch` again to finish it, or give it up with "
                "`cutover switch --abandon` (the fence lifted, the writers back on the source); "
                f"then {then}",
            )
        return []

    return check
