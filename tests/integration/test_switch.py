"""The switch on real servers, under a running write load."""

import json
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import yaml

from cutover.lab import Lab
from cutover.plan import dump
from cutover.runner import FAILPOINT
from tests.conftest import Result, connect
from tests.integration.conftest import (
    Running,
    acked_on,
    audit,
    audit_on_source,
    can_login,
    ledger_of,
    move_of,
    nothing_lost,
    replication_objects,
    set_replication,
)

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("tenants", [3])
def test_a_switch_of_several_databases_under_load_promotes_them_together_and_loses_nothing(
    lab: Lab, under_load: Running, cutover: Callable[..., Result]
) -> None:
    """Four databases of the application's (one written, three tenants): promoted, their
    barriers committed and their snapshots pinned several at a time, and from the
    application's side no error but the fence's, no acknowledged write lost."""
    result = cutover("switch", "-p", str(under_load.plan), "--yes")
    assert result.code == 0, result.stdout + result.stderr
    outcome = nothing_lost(lab, under_load)
    assert outcome.errors == []
    assert outcome.fenced_errors <= under_load.work.workers
    assert acked_on(under_load, lab.server("target").port) > 0
    for db in (under_load.db, *under_load.tenants):
        with connect(lab.server("target"), db) as conn:
            subscriptions = conn.execute(
                "SELECT count(*) AS n FROM pg_subscription s JOIN pg_database d "
                "ON d.oid = s.subdbid WHERE d.datname = current_database()"
            ).fetchone()
            assert subscriptions == {"n": 0}, db  # promoted
    for db in under_load.tenants:
        with connect(lab.server("target"), db) as conn:
            assert conn.execute("SELECT count(*) AS n FROM accounts").fetchone() == {"n": 100}
            owner = conn.execute(
                "SELECT tableowner FROM pg_tables WHERE tablename = 'accounts'"
            ).fetchone()
            assert owner == {"tableowner": under_load.role}


@pytest.mark.parametrize("controller", ["superuser", "managed"])
def test_a_switch_under_load_loses_no_acknowledged_write(
    lab: Lab, under_load: Running, cutover: Callable[..., Result]
) -> None:
    """The application owns its tables and writes as two roles; cutover reaches the source
    as a superuser, or as a managed service's admin (no superuser)."""
    result = cutover("switch", "-p", str(under_load.plan), "--yes")
    assert result.code == 0, result.stdout + result.stderr
    assert "switched: writes paused" in result.stdout
    # The application carries on, on the target.
    target_port = lab.server("target").port
    deadline = under_load.work.log.acked + 200
    while under_load.work.log.acked < deadline:
        under_load.work.stop.wait(0.1)
    under_load.stop()

    outcome = audit(lab, under_load)
    assert outcome.acknowledged > 500
    assert outcome.missing == []
    assert outcome.after_fence == 0
    # From the application's side: prepare (with a backfill), start, the switch and after
    # it, no write failed but those the fence ended (at most one per connection).
    assert outcome.errors == []
    assert outcome.fenced_errors <= under_load.work.workers
    assert acked_on(under_load, target_port) > 100
    assert "REFRESH MATERIALIZED VIEW CONCURRENTLY" in result.stdout
    assert "applied all/switch.check_writers" in result.stdout  # the load said it writes

    with (
        connect(lab.server("source"), under_load.db) as source,
        connect(lab.server("target"), under_load.db) as target,
    ):
        # Every sequence (the shared ticket, each table's id) at or past the source's: set
        # ahead while the load wrote, then in the pause those that moved since.
        seqs = "SELECT sequencename AS name, last_value FROM pg_sequences ORDER BY 1"
        source_values = {r["name"]: r["last_value"] for r in source.execute(seqs)}
        target_values = {r["name"]: r["last_value"] for r in target.execute(seqs)}
        assert len(source_values) > 3 and source_values.keys() == target_values.keys()
        behind = [n for n, v in source_values.items() if (target_values[n] or 0) < (v or 0)]
        assert behind == []  # ahead (the load writes on the target now), never behind
        # The report is populated on the target, from the target's rows at the refresh.
        view = target.execute(
            "SELECT v.rows, (SELECT count(*) FROM load_01) AS now FROM load_totals v"
        ).fetchone()
        assert view is not None and 0 < view["rows"] <= view["now"]
    objects = replication_objects(lab, under_load.db)
    assert objects["subscriptions"] == 0
    assert objects["slots"] == 0  # no slot left to pin WAL on the old server
    assert not can_login(lab, under_load.role)  # still fenced: the source is retired

    status = json.loads(cutover("status", "-p", str(under_load.plan), "--json").stdout)
    assert status["databases"][under_load.db]["switched"] is True
    ledger = next((under_load.plan.parent / "state").glob("*.ledger.json"))
    events = [e for e in json.loads(ledger.read_text())["events"] if e["kind"] == "write_pause"]
    assert len(events) == 1 and events[0]["detail"].startswith("writes paused ")


@pytest.mark.parametrize("engine", ["native"])
def test_counts_that_differ_at_the_barrier_warn_after_the_writers_are_back(
    lab: Lab, under_load: Running, cutover: Callable[..., Result]
) -> None:
    """The counts run off the pause, in the snapshots of the barrier: a difference found
    then rolls nothing back (the writers write on the target), it is a warning, exit 3."""
    with connect(lab.server("target"), under_load.db) as target:  # a row only the target has
        target.execute("INSERT INTO load_02 (id, v) VALUES (1000000000, 0)")
    warned = cutover("switch", "-p", str(under_load.plan), "--yes")
    assert warned.code == 3, warned.stdout + warned.stderr
    assert "WARNING:" in warned.stderr
    assert "all/switch.verify_counts" in warned.stderr
    assert "row counts at the barrier differ" in warned.stderr
    found = re.search(r"load_02\" (\d+) vs (\d+)", warned.stderr)
    assert found is not None and int(found[2]) == int(found[1]) + 1  # the one extra row
    assert "applied all/switch.start_writers" in warned.stdout  # nothing was rolled back
    target_port = lab.server("target").port
    before = acked_on(under_load, target_port)
    under_load.work.stop.wait(1.0)
    assert acked_on(under_load, target_port) > before + 50  # the load writes on the target
    nothing_lost(lab, under_load, writing=0)


@pytest.mark.parametrize("engine", ["native"])
def test_a_switch_killed_after_the_fence_is_abandoned_with_one_command(
    lab: Lab, under_load: Running, cutover: Callable[..., Result]
) -> None:
    """Killed after the fence, before the promotion: `switch --abandon` lifts the fence and
    starts the writers on the source; a later switch starts from its first step."""
    plan = str(under_load.plan)
    fenced = {FAILPOINT: "all/switch.fence_source@applied"}
    killed = cutover("switch", "-p", plan, "--yes", env=fenced)
    assert killed.code == -9
    assert not can_login(lab, under_load.role)  # fenced, the writers stopped
    planned = cutover("switch", "-p", plan, "--abandon", "--dry-run")
    assert planned.code == 0, planned.stdout + planned.stderr
    assert "all/switch.fence_source" in planned.stdout and "dry run" in planned.stdout
    assert not can_login(lab, under_load.role)

    abandoned = cutover("switch", "-p", plan, "--abandon", "--yes")
    assert abandoned.code == 0, abandoned.stdout + abandoned.stderr
    assert "abandoned" in abandoned.stdout
    assert can_login(lab, under_load.role)
    source_port = lab.server("source").port
    before = acked_on(under_load, source_port)
    under_load.work.stop.wait(1.5)
    assert acked_on(under_load, source_port) > before + 50  # the load writes on the source
    statuses = {k: v["status"] for k, v in ledger_of(under_load).items() if "switch." in k}
    assert set(statuses.values()) == {"undone"}, statuses
    again = cutover("switch", "-p", plan, "--abandon", "--yes")
    assert again.code == 2 and "no interrupted switch to abandon" in again.stderr

    second = cutover("switch", "-p", plan, "--yes")
    assert second.code == 0, second.stdout + second.stderr
    assert "applied all/switch.check_ready" in second.stdout
    nothing_lost(lab, under_load)


def test_a_barrier_timeout_rolls_back_and_a_second_switch_succeeds(
    lab: Lab, under_load: Running, cutover: Callable[..., Result]
) -> None:
    set_replication(lab, under_load, enabled=False)
    failed = cutover("switch", "-p", str(under_load.plan), "--yes")
    assert failed.code == 1
    assert "did not confirm the barrier of" in failed.stderr
    assert "within 5 s" in failed.stderr
    assert "undone" in failed.stderr

    # Rolled back: the role may log in again and the load writes on the source.
    assert can_login(lab, under_load.role)
    source_port = lab.server("source").port
    before = acked_on(under_load, source_port)
    under_load.work.stop.wait(1.5)
    assert acked_on(under_load, source_port) > before + 50

    # Replication resumes; the next switch starts again from its first step.
    set_replication(lab, under_load, enabled=True)
    second = cutover("switch", "-p", str(under_load.plan), "--yes")
    assert second.code == 0, second.stdout + second.stderr
    assert "applied all/switch.check_ready" in second.stdout
    nothing_lost(lab, under_load)


@pytest.mark.parametrize("engine", ["native"])
def test_an_unhealthy_writer_after_the_promotion_warns_and_a_second_switch_finishes(
    lab: Lab, under_load: Running, cutover: Callable[..., Result], tmp_path: Path
) -> None:
    """Past the point of no return an unhealthy writer rolls nothing back: exit 3, a warning."""
    fixed = tmp_path / "probe-fixed"
    data = yaml.safe_load(under_load.plan.read_text())
    health = f"test -e '{fixed}' || {{ echo 'cannot reach db' >&2; exit 1; }}"
    data["writers"].append(
        {
            "name": "probe",
            "command": {"stop": ["true"], "start": ["true"], "health": ["sh", "-c", health]},
        }
    )
    data["thresholds"]["drain_timeout"] = "1s"
    under_load.plan.write_text(yaml.safe_dump(data))
    plan = str(under_load.plan)

    warned = cutover("switch", "-p", plan, "--yes")
    assert warned.code == 3, warned.stdout + warned.stderr
    assert "WARNING:" in warned.stderr
    assert "all/switch.check_writers" in warned.stderr
    assert "probe: exit 1: cannot reach db" in warned.stderr
    assert "app:" not in warned.stderr  # the load is healthy
    assert "nothing undone" in warned.stderr
    # Not rolled back: the target is promoted and the source stays fenced.
    assert not can_login(lab, under_load.role)
    status = json.loads(cutover("status", "-p", plan, "--json").stdout)
    assert status["databases"][under_load.db]["switched"] is True
    steps = {s["key"]: s for s in status["steps"]}
    check = steps["all/switch.check_writers"]
    assert check["status"] == "failed"
    assert "cannot reach db" in check["error"]
    assert steps["all/switch.promote"]["status"] == "done"
    shown = cutover("status", "-p", plan)
    assert "check_writers" in shown.stdout and "cannot reach db" in shown.stdout

    fixed.touch()  # the writer recovers
    again = cutover("switch", "-p", plan, "--yes")
    assert again.code == 0, again.stdout + again.stderr
    assert "applied all/switch.check_writers" in again.stdout
    assert ledger_of(under_load)["all/switch.check_writers"]["status"] == "done"
    nothing_lost(lab, under_load)


def leftovers(lab: Lab, running: Running) -> dict[str, int]:
    """What of the move is still on the servers."""
    name = f"cutover_{move_of(running)}"
    counts = replication_objects(lab, running.db)
    for side in ("source", "target"):
        with connect(lab.server(side), running.db) as conn:
            row = conn.execute(
                "SELECT count(*) AS n FROM pg_roles WHERE rolname LIKE %s", (f"{name}%",)
            )
            counts[f"{side} roles"] = row.fetchone()["n"]  # type: ignore[index]
            row = conn.execute("SELECT count(*) AS n FROM pg_namespace WHERE nspname = '_cutover'")
            counts[f"{side} schema"] = row.fetchone()["n"]  # type: ignore[index]
    return counts


def test_cleanup_refuses_a_half_done_switch_then_removes_exactly_the_move(
    lab: Lab, under_load: Running, cutover: Callable[..., Result]
) -> None:
    plan = str(under_load.plan)
    killed = cutover(
        "switch", "-p", plan, "--yes", env={FAILPOINT: "all/switch.wait_for_barrier@applied"}
    )
    assert killed.code == -9
    refused = cutover("cleanup", "-p", plan, "--yes")
    assert refused.code == 1
    assert "a switch of this move is half done" in refused.stderr
    status = json.loads(cutover("status", "-p", plan, "--json").stdout)
    assert status["fenced_roles"] and status["switched"] is False  # status says FENCED

    assert cutover("switch", "-p", plan, "--yes").code == 0
    under_load.stop()
    # The old source is made read-only, as a retired server often is.
    with connect(lab.server("source")) as conn:
        conn.execute(
            f'ALTER DATABASE "{under_load.db.replace(chr(34), chr(34) * 2)}" '
            "SET default_transaction_read_only = on"
        )
    dry = cutover("cleanup", "-p", plan, "--dry-run")
    dropped = {"native": "DROP PUBLICATION", "pglogical": "pglogical.drop_replication_set"}
    assert dry.code == 0 and dropped[under_load.engine] in dry.stdout
    assert leftovers(lab, under_load)["publications"] == 1

    done = cutover("cleanup", "-p", plan, "--yes")
    assert done.code == 0, done.stdout + done.stderr
    assert set(leftovers(lab, under_load).values()) == {0}
    again = cutover("cleanup", "-p", plan, "--yes")
    assert again.code == 0 and "applied" not in again.stdout
    # The application's data and role are untouched.
    with connect(lab.server("target"), under_load.db) as conn:
        row = conn.execute("SELECT count(*) AS n FROM load_01").fetchone()
        assert row is not None and row["n"] > 0


def test_rollback_after_a_switch_with_fallback_loses_nothing_written_on_the_target(
    lab: Lab, under_load: Running, cutover: Callable[..., Result]
) -> None:
    plan = str(under_load.plan)
    no_fallback = cutover("rollback", "-p", plan, "--yes", "--dry-run")
    assert no_fallback.code == 1 and "no fallback replication" in no_fallback.stderr

    switched = cutover("switch", "-p", plan, "--yes", "--keep-fallback")
    assert switched.code == 0, switched.stdout + switched.stderr
    target_port, source_port = lab.server("target").port, lab.server("source").port
    written_on_target = acked_on(under_load, target_port)
    under_load.work.stop.wait(1.5)
    assert acked_on(under_load, target_port) > written_on_target + 50

    rolled = cutover("rollback", "-p", plan, "--yes")
    assert rolled.code == 0, rolled.stdout + rolled.stderr
    assert "rolled back: writes paused" in rolled.stdout
    assert "applied all/rollback.check_writers" in rolled.stdout
    on_source = acked_on(under_load, source_port)
    under_load.work.stop.wait(1.5)
    assert acked_on(under_load, source_port) > on_source + 50  # writing on the source again
    under_load.stop()

    # Every acknowledged write, on either server, is on the source now.
    assert audit_on_source(lab, under_load).missing == []
    assert can_login(lab, under_load.role)

    done = cutover("cleanup", "-p", plan, "--yes")
    assert done.code == 0, done.stdout + done.stderr
    assert set(replication_objects(lab, under_load.db).values()) == {0}


def test_a_superuser_still_writing_after_the_fence_aborts_the_switch(
    lab: Lab, under_load: Running, cutover: Callable[..., Result]
) -> None:
    dba, password = f"dba_{move_of(under_load)}", "dba-pw-0192"
    with connect(lab.server("source")) as conn:
        conn.execute(f"CREATE ROLE {dba} SUPERUSER LOGIN PASSWORD '{password}'")
    server = lab.server("source")
    with psycopg.connect(
        host=server.host, port=server.port, user=dba, password=password, dbname=under_load.db
    ) as writer:
        writer.execute("INSERT INTO load_01 (v) VALUES (-42)")  # open, uncommitted: writing
        result = cutover("switch", "-p", str(under_load.plan), "--yes")
        writer.rollback()
    assert result.code == 1
    assert "sessions still write on the source after the fence" in result.stderr
    assert dba in result.stderr
    assert can_login(lab, under_load.role)  # rolled back: the application writes again


def test_sigterm_during_the_switch_rolls_it_back(
    lab: Lab, under_load: Running, cutover: Callable[..., Result]
) -> None:
    set_replication(lab, under_load, enabled=False)
    switch = subprocess.Popen(
        [sys.executable, "-m", "cutover", "switch", "-p", str(under_load.plan), "--yes"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 30
    while ledger_of(under_load).get("all/switch.wait_for_barrier", {}).get("status") != "running":
        assert time.monotonic() < deadline and switch.poll() is None
        time.sleep(0.05)
    switch.send_signal(signal.SIGTERM)
    _, stderr = switch.communicate(timeout=30)
    assert switch.returncode == 130, stderr
    assert "interrupted (Ctrl-C or SIGTERM)" in stderr
    assert "undone" in stderr
    assert can_login(lab, under_load.role)
    source_port = lab.server("source").port
    before = acked_on(under_load, source_port)
    under_load.work.stop.wait(1.0)
    assert acked_on(under_load, source_port) > before + 30  # the application writes again


def test_keep_fallback_is_refused_before_anything_stops_when_the_target_cannot_replicate(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, cutover: Callable[..., Result]
) -> None:
    mixed = Lab(tmp_path_factory.mktemp("mixed"), per_server={"target": {"wal_level": "replica"}})
    mixed.up(sample=False)
    try:
        with connect(mixed.server("source")) as conn:
            conn.execute("CREATE DATABASE shop")
        with connect(mixed.server("source"), "shop") as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
        plan = tmp_path / "plan.yaml"
        data = yaml.safe_load(dump(mixed.plan(["shop"], move="mixed")))
        data.update(state_dir=str(tmp_path / "state"), thresholds={"lag_window": "0s"})
        plan.write_text(yaml.safe_dump(data))
        for command in (["prepare"], ["start", "--wait"]):
            assert cutover(*command, "-p", str(plan)).code == 0

        refused = cutover("switch", "-p", str(plan), "--yes", "--keep-fallback")
        assert refused.code == 1
        assert "--keep-fallback cannot replicate back to the source" in refused.stderr
        assert "the target's wal_level is replica" in refused.stderr
        assert "stop_writers" not in refused.stdout  # nothing was stopped or fenced
        assert cutover("switch", "-p", str(plan), "--yes").code == 0
    finally:
        mixed.down(purge=True)


def lag_spike(lab: Lab, running: Running, size: int = 4 * 1024**2) -> None:
    """WAL the target has not confirmed: replication held, then `size` bytes written."""
    set_replication(lab, running, enabled=False)
    with connect(lab.server("source"), running.db) as conn:
        conn.execute("SELECT pg_logical_emit_message(false, 'spike', repeat('x', %s))", (size,))


def with_thresholds(running: Running, **thresholds: str) -> None:
    data = yaml.safe_load(running.plan.read_text())
    data["thresholds"] = {**data.get("thresholds", {}), **thresholds}
    running.plan.write_text(yaml.safe_dump(data))


@pytest.mark.parametrize("engine", ["native"])
def test_a_lag_spike_before_the_switch_is_waited_out(
    lab: Lab, under_load: Running, cutover: Callable[..., Result]
) -> None:
    with_thresholds(under_load, lag_window="2s", ready_timeout="60s")
    lag_spike(lab, under_load)
    began = time.monotonic()
    switch = subprocess.Popen(
        [sys.executable, "-m", "cutover", "switch", "-p", str(under_load.plan), "--yes"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(4.0)  # the spike lasts longer than the window: the switch must wait
    assert switch.poll() is None
    assert "all/switch.stop_writers" not in ledger_of(under_load)
    set_replication(lab, under_load, enabled=True)
    stdout, stderr = switch.communicate(timeout=120)
    assert switch.returncode == 0, stdout + stderr
    assert time.monotonic() - began > 4.0 + 2.0  # the spike, then a whole quiet window
    nothing_lost(lab, under_load)


@pytest.mark.parametrize("engine", ["native"])
def test_a_spike_past_ready_timeout_fails_the_switch_with_nothing_changed(
    lab: Lab, under_load: Running, cutover: Callable[..., Result]
) -> None:
    with_thresholds(under_load, lag_window="1s", ready_timeout="3s")
    lag_spike(lab, under_load)
    failed = cutover("switch", "-p", str(under_load.plan), "--yes")
    assert failed.code == 1, failed.stdout + failed.stderr
    message = " ".join(failed.stderr.split())
    assert "the lag did not stay under max_switch_lag (1048576 B) for 1 s" in message
    assert "within 3 s" in message and "B at most" in message
    assert "nothing was stopped" in message
    ledger = ledger_of(under_load)
    assert ledger["all/switch.check_ready"]["status"] == "failed"
    assert "all/switch.stop_writers" not in ledger
    assert can_login(lab, under_load.role)
    source_port = lab.server("source").port
    before = acked_on(under_load, source_port)
    under_load.work.stop.wait(1.0)
    assert acked_on(under_load, source_port) > before + 30  # the application never stopped
    set_replication(lab, under_load, enabled=True)
