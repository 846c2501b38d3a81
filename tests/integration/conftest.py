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
ENGINES = ["native", "pglogical"]


@dataclass
class Running:
    """A move under load: its database, plan, load and write log."""

    db: str
    plan: Path
    engine: str
    role: str
    log_path: Path
    work: load.Load
    thread: threading.Thread

    def stop(self) -> None:
        self.work.stop.set()
        self.thread.join(timeout=30)


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Each replication engine in turn."""
    return str(request.param)


@pytest.fixture
def under_load(
    engine: str,
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
        engine=engine,
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
    running = Running(db, plan, engine, role, log_path, work, thread)
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


def set_replication(lab: Lab, running: Running, *, enabled: bool) -> None:
    """Stop or resume applying changes on the target, the engine's own way."""
    name = f"cutover_{move_of(running)}"
    with connect(lab.server("target"), running.db) as conn:
        if running.engine == "pglogical":
            verb = "enable" if enabled else "disable"
            conn.execute(f"SELECT pglogical.alter_subscription_{verb}(%s, true)", (name,))
        else:
            conn.execute(f"ALTER SUBSCRIPTION {name} {'ENABLE' if enabled else 'DISABLE'}")


def replication_objects(lab: Lab, running: Running) -> dict[str, int]:
    """Slots, subscriptions and publications or replication sets of the move's database."""
    counts = {"slots": 0, "subscriptions": 0, "publications": 0, "extensions": 0}
    for side in ("source", "target"):
        with connect(lab.server(side), running.db) as conn:
            queries = {
                "slots": "SELECT count(*) AS n FROM pg_replication_slots "
                "WHERE database = current_database()",
                "subscriptions": "SELECT count(*) AS n FROM pg_subscription s JOIN pg_database d "
                "ON d.oid = s.subdbid WHERE d.datname = current_database()",
                "publications": "SELECT count(*) AS n FROM pg_publication",
                "extensions": "SELECT count(*) AS n FROM pg_extension WHERE extname = 'pglogical'",
            }
            if conn.execute(queries["extensions"]).fetchone() == {"n": 1}:
                queries["subscriptions"] += " UNION ALL SELECT count(*) FROM pglogical.subscription"
                queries["publications"] += (
                    " UNION ALL SELECT count(*) FROM pglogical.replication_set "
                    "WHERE set_name LIKE 'cutover%%'"
                )
            for what, query in queries.items():
                counts[what] += sum(row["n"] for row in conn.execute(query).fetchall())
    return counts
