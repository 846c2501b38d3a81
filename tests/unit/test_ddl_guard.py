"""The DDL guard without a server: its names, where its steps go, and the schema copy's filter."""

from pathlib import Path

import pytest

from cutover.database import Pool
from cutover.engines.base import Traits
from cutover.engines.postgres import PerDatabase, Replication
from cutover.pg import ddl_guard
from cutover.pg.schema import TocEntry, without_event_triggers
from cutover.phases import cleanup, prepare
from cutover.plan import Plan

NAME_BYTES = 63  # PostgreSQL's NAMEDATALEN - 1: a longer name is cut short


def plan(tmp_path: Path, **changes: object) -> Plan:
    server = {"host": "127.0.0.1", "port": 1, "user": "u"}
    return Plan.model_validate(
        {
            "move": "m",
            "source": server,
            "target": {**server, "port": 2},
            "databases": ["app"],
            "state_dir": str(tmp_path),
            **changes,
        }
    )


def engine(the_plan: Plan) -> PerDatabase:
    def replication(db: str) -> Replication:
        raise AssertionError(f"replication of {db} asked while phases were built")

    return PerDatabase("declared", Traits(), the_plan, Pool({}), replication)


def test_the_guards_names_fit_for_the_longest_move_name() -> None:
    move = "m" * 40  # the longest a plan allows
    names = [ddl_guard.name(move), *ddl_guard.triggers(move)]
    assert names == [
        f"cutover_{move}_ddl_guard",
        f"cutover_{move}_ddl_guard",
        f"cutover_{move}_ddl_guard_drop",
    ]
    assert all(len(n.encode()) <= NAME_BYTES for n in names)
    assert set(ddl_guard.triggers(move).values()) == {"ddl_command_end", "sql_drop"}


@pytest.mark.parametrize("guarded", [False, True])
def test_prepare_guards_the_source_only_when_the_plan_asks(tmp_path: Path, guarded: bool) -> None:
    the_plan = plan(tmp_path, ddl_guard=guarded)
    steps = [s.name for s in prepare.phase(the_plan, Pool({}), "app", engine(the_plan)).steps]
    assert ("guard_source_ddl" in steps) is guarded
    if guarded:  # in the `_cutover` schema, which create_source_barrier makes
        assert steps.index("guard_source_ddl") == steps.index("create_source_barrier") + 1
    # cleanup drops it whatever the plan says now, first after the check
    cleaned = [s.name for s in cleanup.phase(the_plan, Pool({}), "app", engine(the_plan)).steps]
    assert cleaned[:2] == [cleanup.CHECK, cleanup.DROP_DDL_GUARD]
    check, rest = cleanup.split(
        cleanup.phase(the_plan, Pool({}), "app", engine(the_plan)), cleanup.CHECK
    )
    assert [s.name for s in check.steps] == [cleanup.CHECK]
    assert [s.name for s in rest.steps] == cleaned[1:]


def test_the_schema_copy_leaves_the_guards_event_triggers_out() -> None:
    lines = [
        "4001; 1259 16390 INDEX public items_v_idx app",
        "4002; 3466 16500 EVENT TRIGGER - cutover_m_ddl_guard postgres",
        "4003; 3466 16501 EVENT TRIGGER - cutover_m_ddl_guard_drop postgres",
        "4004; 3466 16502 EVENT TRIGGER - audit_ddl postgres",
    ]
    entries = [TocEntry(line, int(line.split()[1]), int(line.split()[2])) for line in lines]
    kept = without_event_triggers(entries, ddl_guard.triggers("m"))
    assert [e.oid for e in kept] == [16390, 16502]  # the user's own event trigger goes along


def test_the_plan_leaves_the_guard_off_unless_asked(tmp_path: Path) -> None:
    assert plan(tmp_path).ddl_guard is False
    assert plan(tmp_path, ddl_guard=True).ddl_guard is True
