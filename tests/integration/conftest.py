"""A move under a running write load, for the switch and kill tests."""

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


def move_of(running: Running) -> str:
    """The move's name, from its plan."""
    return str(yaml.safe_load(running.plan.read_text())["move"])


def ledger_of(running: Running) -> dict[str, dict[str, object]]:
    """The move's step records."""
    path = next((running.plan.parent / "state").glob("*.ledger.json"))
    steps: dict[str, dict[str, object]] = json.loads(path.read_text())["steps"]
    return steps


def can_login(lab: Lab, role: str) -> bool:
    """Whether the role may log in to the source (False while fenced)."""
    with connect(lab.server("source")) as conn:
        row = conn.execute(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,)
        ).fetchone()
    assert row is not None
    return bool(row["rolcanlogin"])
