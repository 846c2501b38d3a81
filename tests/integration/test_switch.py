"""The switch on real servers, under a running write load."""

import json
from collections.abc import Callable

import pytest

from cutover.lab import Lab
from tests.conftest import Result, connect
from tests.integration.conftest import Running, acked_on, audit, move_of

pytestmark = pytest.mark.integration


def test_a_switch_under_load_loses_no_acknowledged_write(
    lab: Lab, under_load: Running, cutover: Callable[..., Result]
) -> None:
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
    assert acked_on(under_load, target_port) > 100

    with (
        connect(lab.server("source"), under_load.db) as source,
        connect(lab.server("target"), under_load.db) as target,
    ):
        seq = "SELECT last_value FROM load_ticket_seq"
        source_value = source.execute(seq).fetchone()
        target_value = target.execute(seq).fetchone()
        assert source_value is not None and target_value is not None
        assert target_value["last_value"] >= source_value["last_value"]  # ahead, never behind
        can_login = source.execute(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (under_load.role,)
        ).fetchone()
        assert can_login == {"rolcanlogin": False}  # still fenced: the source is retired
        slots = source.execute(
            "SELECT count(*) AS n FROM pg_replication_slots WHERE slot_name LIKE %s",
            (f"cutover_{move_of(under_load)}%",),
        ).fetchone()
        subs = target.execute(
            "SELECT count(*) AS n FROM pg_subscription s JOIN pg_database d "
            "ON d.oid = s.subdbid WHERE d.datname = current_database()"
        ).fetchone()
    assert subs == {"n": 0}
    assert slots == {"n": 0}  # no slot left to pin WAL on the old server

    status = json.loads(cutover("status", "-p", str(under_load.plan), "--json").stdout)
    assert status["databases"][under_load.db]["switched"] is True
    ledger = next((under_load.plan.parent / "state").glob("*.ledger.json"))
    events = [e for e in json.loads(ledger.read_text())["events"] if e["kind"] == "write_pause"]
    assert len(events) == 1 and events[0]["detail"].startswith("writes paused ")


def test_a_barrier_timeout_rolls_back_and_a_second_switch_succeeds(
    lab: Lab, under_load: Running, cutover: Callable[..., Result]
) -> None:
    with connect(lab.server("target"), under_load.db) as conn:
        conn.execute(f"ALTER SUBSCRIPTION cutover_{move_of(under_load)} DISABLE")
    failed = cutover("switch", "-p", str(under_load.plan), "--yes")
    assert failed.code == 1
    assert "did not confirm the barrier within 5 s" in failed.stderr
    assert "undone" in failed.stderr

    # Rolled back: the role may log in again and the load writes on the source.
    with connect(lab.server("source")) as conn:
        row = conn.execute(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (under_load.role,)
        ).fetchone()
        assert row == {"rolcanlogin": True}
    source_port = lab.server("source").port
    before = acked_on(under_load, source_port)
    under_load.work.stop.wait(1.5)
    assert acked_on(under_load, source_port) > before + 50

    # Replication resumes; the next switch starts again from its first step.
    with connect(lab.server("target"), under_load.db) as conn:
        conn.execute(f"ALTER SUBSCRIPTION cutover_{move_of(under_load)} ENABLE")
    second = cutover("switch", "-p", str(under_load.plan), "--yes")
    assert second.code == 0, second.stdout + second.stderr
    assert "applied all/switch.check_ready" in second.stdout
    under_load.work.stop.wait(1.0)
    under_load.stop()
    outcome = audit(lab, under_load)
    assert outcome.missing == []
    assert outcome.after_fence == 0
