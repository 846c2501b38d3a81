"""Drift while streaming: what the source changed that replication does not carry is shown,
and the switch refuses it before any writer stops."""

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from cutover.lab import Lab
from tests.conftest import Databases, Result, connect
from tests.integration.conftest import ledger_of_plan, wait_until

pytestmark = pytest.mark.integration


def streaming_move(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    engine: str,
    *,
    lag_window: str = "2s",
) -> tuple[str, str]:
    """A database with one table, prepared and streaming; the database and the plan.

    The switches that succeed here hold the lag for `lag_window` first: the lab's 2 s,
    as the window is not what these tests are about (20 s cost each switch 18 s).
    """
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
            thresholds={"lag_window": lag_window, "ready_timeout": "60s"},
        )
    )
    assert cutover("prepare", "-p", plan).code == 0
    started = cutover("start", "-p", plan, "--wait")
    assert started.code == 0, started.stdout + started.stderr
    return db, plan


def status_of(cutover: Callable[..., Result], plan: str, db: str) -> dict[str, Any]:
    """The database's part of `cutover status --json`."""
    return dict(json.loads(cutover("status", "-p", plan, "--json").stdout)["databases"][db])


@pytest.mark.parametrize("engine", ["native", "pglogical"])
def test_a_column_added_on_the_source_is_shown_stops_the_switch_and_sync_schema_mends_it(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    engine: str,
) -> None:
    db, plan = streaming_move(lab, databases, write_plan, cutover, engine)
    with connect(lab.server("source"), db) as conn:  # a column the target does not have
        conn.execute("ALTER TABLE items ADD COLUMN extra int NOT NULL DEFAULT 5")
        conn.execute("ALTER TABLE items ALTER COLUMN extra SET DEFAULT 6")
        conn.execute("ALTER TABLE items ALTER COLUMN v TYPE bigint")
        conn.execute("INSERT INTO items VALUES (1000, 1, 7)")
    if engine == "native":  # pglogical keeps no error count
        wait_until(
            lambda: bool(status_of(cutover, plan, db)["apply_errors"]),
            seconds=60,
            what="no apply error",
        )
        assert "the apply worker failed" in cutover("status", "-p", plan).stdout
    drift = status_of(cutover, plan, db)["schema_drift"]
    assert drift == [
        '"public"."items": column "v" is bigint on the source, integer on the target',
        '"public"."items": column "extra" integer not on the target',
    ]
    scraped = cutover("metrics", "-p", plan, "--once").stdout
    assert "cutover_schema_drift{" in scraped and "} 2.0" in scraped, scraped

    switched = cutover("switch", "-p", plan, "--yes")
    assert switched.code == 1, switched.stdout + switched.stderr
    assert "the schema drifted since start" in switched.stderr
    assert "cutover sync-schema" in switched.stderr
    assert "nothing was stopped" in switched.stderr
    steps = ledger_of_plan(Path(plan))
    assert "all/switch.stop_writers" not in steps  # no writer was stopped
    assert steps["all/switch.check_ready"]["status"] == "failed"

    dry = cutover("sync-schema", "-p", plan, "--dry-run")
    assert dry.code == 0, dry.stdout + dry.stderr
    assert 'ALTER TABLE ONLY "public"."items" ADD COLUMN "extra" integer\n' in dry.stdout
    assert '"public"."items"."extra": the source\'s values, by key' in dry.stdout
    assert 'ALTER COLUMN "extra" SET NOT NULL' in dry.stdout
    assert status_of(cutover, plan, db)["schema_drift"] == drift  # a dry run changes nothing
    synced = cutover("sync-schema", "-p", plan, "--yes")
    assert synced.code == 0, synced.stdout + synced.stderr
    assert status_of(cutover, plan, db)["schema_drift"] == []
    with connect(lab.server("target"), db) as conn:  # the apply goes on by itself

        def arrived() -> bool:
            return conn.execute("SELECT 1 FROM items WHERE id = 1000").fetchone() is not None

        wait_until(arrived, seconds=120, what="the row with the new column never arrived")
    assert cutover("switch", "-p", plan, "--yes").code == 0
    with connect(lab.server("target"), db) as conn:
        rows = conn.execute("SELECT id, extra FROM items WHERE id IN (1, 1000) ORDER BY id")
        assert rows.fetchall() == [{"id": 1, "extra": 5}, {"id": 1000, "extra": 7}]
        conn.execute("INSERT INTO items (id, v) VALUES (1001, 1)")  # the source's default
        assert conn.execute("SELECT extra FROM items WHERE id = 1001").fetchone() == {"extra": 6}
    cleaned = cutover("cleanup", "-p", plan, "--yes")
    assert cleaned.code == 0, cleaned.stdout + cleaned.stderr


@pytest.mark.parametrize("engine", ["native", "pglogical"])
def test_a_table_made_on_the_source_after_start_stops_the_switch_until_sync_schema_carries_it(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    engine: str,
) -> None:
    db, plan = streaming_move(lab, databases, write_plan, cutover, engine)
    with connect(lab.server("source"), db) as conn:
        conn.execute(
            "CREATE TABLE later (id int PRIMARY KEY, note text);"
            "INSERT INTO later SELECT g, 'n' || g FROM generate_series(1, 20) g"
        )
    assert status_of(cutover, plan, db)["schema_drift"] == ['"public"."later": on the source only']
    switched = cutover("switch", "-p", plan, "--yes")
    assert switched.code == 1, switched.stdout + switched.stderr
    assert '"public"."later": on the source only' in switched.stderr
    assert "Traceback" not in switched.stderr
    assert "all/switch.stop_writers" not in ledger_of_plan(Path(plan))

    synced = cutover("sync-schema", "-p", plan, "--yes")
    assert synced.code == 0, synced.stdout + synced.stderr
    with connect(lab.server("source"), db) as conn:  # written while its copy runs
        conn.execute("INSERT INTO later VALUES (21, 'n21')")
    with connect(lab.server("target"), db) as conn:

        def copied() -> bool:
            return conn.execute("SELECT count(*) AS n FROM later").fetchone() == {"n": 21}

        wait_until(copied, seconds=60, what="the new table was not carried")
    assert status_of(cutover, plan, db)["schema_drift"] == []
    switched = cutover("switch", "-p", plan, "--yes")
    assert switched.code == 0, switched.stdout + switched.stderr
    with connect(lab.server("target"), db) as conn:
        assert conn.execute("SELECT count(*) AS n FROM later").fetchone() == {"n": 21}
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
    with connect(lab.server("target"), db) as conn:

        def arrived() -> bool:
            return conn.execute("SELECT 1 FROM items WHERE id = 500").fetchone() is not None

        wait_until(arrived, seconds=30, what="the first move stopped replicating")
    assert cutover("check", "-p", plan).stdout.count("another move named") == 0
    cleaned = cutover("cleanup", "-p", plan, "--yes")
    assert cleaned.code == 0, cleaned.stdout + cleaned.stderr


def test_a_pglogical_worker_stopped_by_a_cut_connection_is_woken_and_the_switch_goes_on(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    """pglogical starts a worker that failed only when its manager wakes (up to 3 min
    later): the switch wakes it once, then holds its window as usual."""
    db, plan = streaming_move(lab, databases, write_plan, cutover, "pglogical", lag_window="1s")
    with connect(lab.server("source")) as conn:  # the sender cut off: the apply worker fails
        conn.execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots "
            "WHERE active AND database = %s",
            (db,),
        )
    with connect(lab.server("source"), db) as conn:
        conn.execute("INSERT INTO items VALUES (700, 700)")

    switched = cutover("switch", "-p", plan, "--yes")

    assert switched.code == 0, switched.stdout + switched.stderr
    assert "the apply worker is stopped" in switched.stderr
    assert "alter_subscription_enable" in switched.stderr
    with connect(lab.server("target"), db) as conn:
        assert conn.execute("SELECT v FROM items WHERE id = 700").fetchone() == {"v": 700}
    cleaned = cutover("cleanup", "-p", plan, "--yes")
    assert cleaned.code == 0, cleaned.stdout + cleaned.stderr


def test_a_pglogical_apply_stopped_by_a_failure_is_shown_and_stops_the_switch(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    """pglogical counts no apply errors: its failure shows as a subscription `down`."""
    # A long window: a worker that restarts and fails again between two polls must not
    # let a short window be held; the switch fails after APPLY_STOPPED_GRACE anyway.
    db, plan = streaming_move(lab, databases, write_plan, cutover, "pglogical", lag_window="20s")
    with connect(lab.server("target"), db) as conn:  # a constraint added on the target only
        conn.execute("ALTER TABLE items ADD CONSTRAINT small CHECK (v < 4000) NOT VALID")
    with connect(lab.server("source"), db) as conn:
        conn.execute("INSERT INTO items VALUES (6000, 5000)")  # the apply fails on it
    wait_until(
        lambda: bool(status_of(cutover, plan, db)["apply_stopped"]),
        seconds=60,
        what="never seen down",
    )
    assert "the apply worker is stopped by a failure" in cutover("status", "-p", plan).stdout
    scraped = cutover("metrics", "-p", plan, "--once").stdout
    assert "cutover_apply_stopped{" in scraped and "} 1.0" in scraped, scraped

    switched = cutover("switch", "-p", plan, "--yes")
    assert switched.code == 1, switched.stdout + switched.stderr
    assert "the target's apply worker has been stopped by a failure" in switched.stderr
    assert "nothing was stopped" in switched.stderr
    assert "all/switch.stop_writers" not in ledger_of_plan(Path(plan))
    cleaned = cutover("cleanup", "-p", plan, "--yes")
    assert cleaned.code == 0, cleaned.stdout + cleaned.stderr
