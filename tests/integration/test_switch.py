"""The switch on real servers, under a running write load."""

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from cutover import load
from cutover.lab import Lab, free_port
from cutover.pg import load as load_sql
from tests.conftest import Databases, Result, connect

pytestmark = pytest.mark.integration

TABLES = 12


@dataclass
class Running:
    """A move under load: its database, plan, load and write log."""

    db: str
    plan: Path
    role: str
    log_path: Path
    work: load.Load
    thread: threading.Thread

    def stop(self) -> None:
        self.work.stop.set()
        self.thread.join(timeout=30)


@pytest.fixture
def under_load(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    tmp_path: Path,
) -> Iterator[Running]:
    """A prepared, started move whose application writes without pause."""
    db = databases.create()
    role, password = f"app_{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    for side in ("source", "target"):
        with connect(lab.server(side)) as conn:
            load_sql.ensure_login_role(conn, role, password)  # type: ignore[arg-type]
    with connect(lab.server("source"), db) as conn:
        load_sql.create_schema(conn, tables=TABLES, writer=role)  # type: ignore[arg-type]
    env = tmp_path / "app.env"
    port = lab.server("source").port
    quoted_db = db.replace('"', "%22").replace(" ", "%20")
    env.write_text(f"DATABASE_URL=postgresql://{role}:{password}@127.0.0.1:{port}/{quoted_db}\n")
    control = free_port()
    plan = write_plan(
        [db],
        move=f"t{uuid.uuid4().hex[:8]}",
        writers=[
            {
                "name": "app",
                "http": {
                    "stop": f"http://127.0.0.1:{control}/pause",
                    "start": f"http://127.0.0.1:{control}/resume",
                    "status": f"http://127.0.0.1:{control}/drained",
                },
            }
        ],
        repoint=[{"name": "env", "file": {"path": str(env), "key": "DATABASE_URL"}}],
        fence={"roles": [role]},
        thresholds={"lag_window": "1s", "switch_timeout": "5s"},
    )
    log_path = tmp_path / "writes.jsonl"
    handle = log_path.open("a")
    work = load.Load(
        env_file=env,
        key="DATABASE_URL",
        tables=load_sql.table_names(TABLES),
        log=load.WriteLog(handle),
        rate=300,
    )
    thread = threading.Thread(target=work.run, kwargs={"port": control, "duration": None})
    thread.start()
    running = Running(db, plan, role, log_path, work, thread)
    try:
        assert cutover("prepare", "-p", str(plan)).code == 0
        started = cutover("start", "-p", str(plan), "--wait")
        assert started.code == 0, started.stdout + started.stderr
        yield running
    finally:
        running.stop()
        handle.close()


def audit(lab: Lab, running: Running) -> load.Audit:
    ledger = next((running.plan.parent / "state").glob("*.ledger.json"))
    steps = json.loads(ledger.read_text())["steps"]
    fenced = steps.get("all/switch.fence_source", {}).get("ended_at")
    with connect(lab.server("target"), running.db) as conn:
        rows = {t: load_sql.rows(conn, t) for t in load_sql.table_names(TABLES)}  # type: ignore[arg-type]
    return load.audit(
        running.log_path, rows, source_port=lab.server("source").port, fenced_at=fenced
    )


def acked_on(running: Running, port: int) -> int:
    lines = [json.loads(line) for line in running.log_path.read_text().splitlines()]
    return sum(1 for e in lines if e["ack"] and e.get("port") == port)


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


def move_of(running: Running) -> str:
    return str(yaml.safe_load(running.plan.read_text())["move"])
