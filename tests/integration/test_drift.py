"""Drift while streaming: what the source changed that replication does not carry is shown,
and the switch refuses it before any writer stops."""

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

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


@pytest.mark.parametrize("engine", ["native", "pglogical"])
def test_a_slot_dropped_by_hand_is_shown_and_start_recopy_leads_back_to_a_working_move(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    engine: str,
) -> None:
    db, plan = streaming_move(lab, databases, write_plan, cutover, engine)
    with connect(lab.server("source")) as conn:  # a DBA drops the slot by hand
        deadline = time.monotonic() + 30
        while conn.execute(
            "SELECT 1 FROM pg_replication_slots WHERE database = %s", (db,)
        ).fetchone():
            conn.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
                "WHERE database = %s AND active",
                (db,),
            )
            conn.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                "WHERE database = %s AND NOT active",
                (db,),
            )
            assert time.monotonic() < deadline, "the slot stayed in use"
    with connect(lab.server("source"), db) as conn:  # changes the target will never get
        conn.execute("INSERT INTO items SELECT g, g FROM generate_series(101, 150) g")

    status = cutover("status", "-p", plan)
    assert "cutover start --recopy" in status.stdout + status.stderr, status.stdout
    switched = cutover("switch", "-p", plan, "--yes")
    assert switched.code == 1, switched.stdout + switched.stderr
    assert "cutover start --recopy" in switched.stderr
    again = cutover("start", "-p", plan, "--wait")
    assert again.code != 0, again.stdout + again.stderr
    assert "cutover start --recopy" in again.stderr

    recopied = cutover("start", "-p", plan, "--wait", "--recopy", "--yes")
    assert recopied.code == 0, recopied.stdout + recopied.stderr
    with connect(lab.server("source"), db) as conn:
        conn.execute("INSERT INTO items VALUES (151, 151)")
    switched = cutover("switch", "-p", plan, "--yes")
    assert switched.code == 0, switched.stdout + switched.stderr
    with connect(lab.server("target"), db) as conn:
        row = conn.execute("SELECT count(*) AS n, sum(v) AS v FROM items").fetchone()
    assert row == {"n": 151, "v": sum(range(1, 152))}
    cleaned = cutover("cleanup", "-p", plan, "--yes")
    assert cleaned.code == 0, cleaned.stdout + cleaned.stderr


def test_a_second_plan_of_the_same_move_name_is_refused_and_leaves_the_first_streaming(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    tmp_path: Path,
) -> None:
    db, plan = streaming_move(lab, databases, write_plan, cutover, "native")
    other_db = databases.create()
    with connect(lab.server("source"), other_db) as conn:
        conn.execute("CREATE TABLE things (id int PRIMARY KEY)")
    first = yaml.safe_load(Path(plan).read_text())
    second_dir = tmp_path / "second"
    second_dir.mkdir()
    second = second_dir / "plan.yaml"
    second.write_text(yaml.safe_dump({**first, "databases": [other_db], "state_dir": "state"}))

    checked = cutover("check", "-p", str(second))
    assert checked.code != 0
    assert f"another move named '{first['move']}'" in checked.stdout, checked.stdout
    for command in (["prepare"], ["start", "--wait"], ["cleanup", "--yes"]):
        refused = cutover(*command, "-p", str(second))
        assert refused.code == 1, [*command, refused.stdout + refused.stderr]
        assert f'the role "cutover_{first["move"]}"' in refused.stderr
        assert "give this plan another `move:` name" in refused.stderr

    with connect(lab.server("source"), db) as conn:  # the first move streams on
        conn.execute("INSERT INTO items VALUES (500, 500)")
    deadline = time.monotonic() + 30
    with connect(lab.server("target"), db) as conn:
        while not conn.execute("SELECT 1 FROM items WHERE id = 500").fetchone():
            assert time.monotonic() < deadline, "the first move stopped replicating"
            time.sleep(0.2)
    assert cutover("check", "-p", plan).stdout.count("another move named") == 0
    cleaned = cutover("cleanup", "-p", plan, "--yes")
    assert cleaned.code == 0, cleaned.stdout + cleaned.stderr
