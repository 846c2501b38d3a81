"""Replication engines behind one Protocol (base.py); each is imported only when chosen.

An engine is one module with `build(plan, pool) -> Engine`; native and pglogical
share postgres.py; dms drives Google's Database Migration Service. No engine
imports another.
"""

import time
import uuid
from collections.abc import Callable, Sequence
from importlib import import_module
from typing import TypeVar

from cutover import wait
from cutover.engines.base import Barrier, Engine
from cutover.errors import UsageError
from cutover.pg.connect import Pool, each
from cutover.plan import Engine as EngineKind
from cutover.plan import Plan

BARRIER_POLL_SECONDS = 0.01
T = TypeVar("T")

_MODULES = {
    EngineKind.NATIVE: "cutover.engines.native",
    EngineKind.PGLOGICAL: "cutover.engines.pglogical",
    EngineKind.DMS: "cutover.engines.dms",  # the only one that loads Google's client
}


def engine_for(plan: Plan, pool: Pool) -> Engine:
    """The plan's engine for the whole move; its module is imported here, lazily."""
    module_name = _MODULES.get(plan.engine)
    if module_name is None:
        raise UsageError(
            f"the {plan.engine.value} engine is not available yet",
            hint="use engine: native, pglogical or dms",
        )
    engine: Engine = import_module(module_name).build(plan, pool)
    return engine


def reversed_plan(plan: Plan) -> Plan:
    """The same move the other way, target to source: fallback replication and rollback.

    Its objects are named cutover_<move>_back, so they never collide with the
    forward ones.
    """
    return plan.reversed()


def each_database(
    engine: Engine, databases: Sequence[str], work: Callable[[str], T]
) -> dict[str, T]:
    """`work` done for every database: several at a time (`pg.connect.each`) where the
    engine's databases replicate apart, else one after another. The answers come in
    `databases`' order, and so does the first failure raised."""
    if not engine.traits.databases_apart:
        return {db: work(db) for db in databases}
    return dict(zip(databases, each(databases, work), strict=True))


def prove_applied(
    engine: Engine,
    databases: Sequence[str],
    *,
    timeout: float,
    hint: str,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Barrier]:
    """A barrier committed on the source of each database, and applied by the target.

    Every write committed on the source before this call is on the target when it
    returns: zero lag, proven instead of estimated. StepFailed names the databases
    whose barrier did not arrive within `timeout`.
    """
    markers = each_database(
        engine, databases, lambda db: engine.write_barrier(db, uuid.uuid4().hex)
    )
    pending = dict(markers)

    def applied() -> bool:
        for db, marker in list(pending.items()):
            if engine.barrier_reached(db, marker):
                del pending[db]
            else:
                engine.heartbeat(db)
        return not pending

    wait.until(
        applied,
        timeout=timeout,
        interval=BARRIER_POLL_SECONDS,
        what=lambda: f"the target did not confirm the barrier of {', '.join(pending)}",
        hint=hint,
        clock=clock,
        sleep=sleep,
    )
    return markers
