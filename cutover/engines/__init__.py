"""Replication engines behind one Protocol (base.py); each is imported only when chosen."""

from importlib import import_module

from cutover.engines.base import Engine
from cutover.errors import UsageError
from cutover.pg.connect import Pool
from cutover.plan import Engine as EngineKind
from cutover.plan import Plan

_MODULES = {
    EngineKind.NATIVE: "cutover.engines.native",
    EngineKind.PGLOGICAL: "cutover.engines.pglogical",
}


def engine_for(plan: Plan, pool: Pool, db: str) -> Engine:
    """The plan's engine for one database; its module is imported here, lazily."""
    module_name = _MODULES.get(plan.engine)
    if module_name is None:
        raise UsageError(
            f"the {plan.engine.value} engine is not available yet",
            hint="use engine: native or pglogical",
        )
    engine: Engine = import_module(module_name).build(plan, pool, db)
    return engine


def reversed_plan(plan: Plan) -> Plan:
    """The same move the other way, target to source: fallback replication and rollback.

    Its objects are named cutover_<move>_back, so they never collide with the
    forward ones.
    """
    return plan.model_copy(
        update={"source": plan.target, "target": plan.source, "move": f"{plan.move}_back"}
    )
