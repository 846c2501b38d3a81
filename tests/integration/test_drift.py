"""Drift while streaming: what the source changed that replication does not carry is shown,
and the switch refuses it before any writer stops."""

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from cutover.lab import Lab
from tests.conftest import Databases, Result, connect
from tests.integration.conftest import ledger_of_plan

pytestmark = pytest.mark.integration


def streaming_move(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    engine: str,
) -> tuple[str, str]:
    """A database with one table, prepared and streaming; the database and the plan."""
    db = databases.create()
    with connect(lab.server("source"), db) as conn:
        conn.execute(
            "CREATE TABLE items (id int PRIMARY KEY, v int);"
            "INSERT INTO items SELECT g, g FROM generate_series(1, 100) g"
        )
    plan = str(
        write_plan(
            [db],
            move=f"d{uuid.uuid4().hex[:8]}",
            engine=engine,
            thresholds={"lag_window": "20s", "ready_timeout": "60s"},
        )
    )
    assert cutover("prepare", "-p", plan).code == 0
    started = cutover("start", "-p", plan, "--wait")
    assert started.code == 0, started.stdout + started.stderr
    return db, plan


def test_a_failing_apply_is_shown_and_stops_the_switch_before_the_writers(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    db, plan = streaming_move(lab, databases, write_plan, cutover, "native")
    with connect(lab.server("source"), db) as conn:  # a column the target does not have
        conn.execute("ALTER TABLE items ADD COLUMN extra int")
        conn.execute("INSERT INTO items VALUES (1000, 1, 7)")
    deadline = time.monotonic() + 30
    while True:
        status = json.loads(cutover("status", "-p", plan, "--json").stdout)
        if status["databases"][db]["apply_errors"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status["databases"][db]["apply_errors"] >= 1
    assert "the apply worker failed" in cutover("status", "-p", plan).stdout

    switched = cutover("switch", "-p", plan, "--yes")
    assert switched.code == 1, switched.stdout + switched.stderr
    assert "the target's apply worker failed" in switched.stderr
    assert "nothing was stopped" in switched.stderr
    steps = ledger_of_plan(Path(plan))
    assert "all/switch.stop_writers" not in steps  # no writer was stopped
    assert steps["all/switch.check_ready"]["status"] == "failed"
    # Given up: cleanup removes the move (its workers are the lab's to share).
    cleaned = cutover("cleanup", "-p", plan, "--yes")
    assert cleaned.code == 0, cleaned.stdout + cleaned.stderr


@pytest.mark.parametrize("engine", ["native", "pglogical"])
def test_a_table_made_on_the_source_after_start_stops_the_switch_before_the_writers(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    engine: str,
) -> None:
    db, plan = streaming_move(lab, databases, write_plan, cutover, engine)
    with connect(lab.server("source"), db) as conn:
        conn.execute("CREATE TABLE later (id int PRIMARY KEY); INSERT INTO later VALUES (1)")
    switched = cutover("switch", "-p", plan, "--yes")
    assert switched.code == 1, switched.stdout + switched.stderr
    assert "tables on the source that this move does not replicate" in switched.stderr
    assert '"public"."later"' in switched.stderr
    assert "Traceback" not in switched.stderr
    assert "all/switch.stop_writers" not in ledger_of_plan(Path(plan))
    cleaned = cutover("cleanup", "-p", plan, "--yes")
    assert cleaned.code == 0, cleaned.stdout + cleaned.stderr
