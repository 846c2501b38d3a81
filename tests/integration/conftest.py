"""A move under a running write load, for the switch and kill tests."""

import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from cutover import load
from cutover.lab import Lab, free_port
from cutover.ledger import FileStore, journal_for
from cutover.pg import load as load_sql
from cutover.plan import load as load_plan
from cutover.steps import SwitchStep as S
from tests import pgbouncer
from tests.conftest import Databases, Result, connect
from tests.gcp.backend import ENABLE_PGLOGICAL, LOGICAL_DECODING, lab_standin
from tests.gcp.standin import Standin, dms_settings

TABLES = 12
TABLE_NAMES = [*load_sql.table_names(TABLES), load_sql.KEYLESS]

# The steps of a native switch with --keep-fallback, in the order it runs them: the
# walks that kill the switch after each in turn.
KEEP_FALLBACK_WALK = [
    S.CHECK_READY,
    S.COPY_SEQUENCES_AHEAD,
    S.STOP_WRITERS,
    S.FENCE_SOURCE,
    S.WAIT_FOR_BARRIER,
    S.COPY_SEQUENCES,
    S.PROMOTE,
    S.START_FALLBACK,
    S.REPOINT,
    S.START_WRITERS,
    S.REFRESH_MATERIALIZED_VIEWS,
    S.RELEASE_SOURCE,
    S.VERIFY_COUNTS,
    S.CHECK_WRITERS,
]
VIEW = "CREATE MATERIALIZED VIEW load_totals AS SELECT 1 AS n, count(*) AS rows FROM load_01"
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
    tenants: tuple[str, ...] = ()  # the move's other databases, the application's too

    def stop(self) -> None:
        self.work.stop.set()
        self.thread.join(timeout=30)


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """Each replication engine in turn."""
    return str(request.param)


@pytest.fixture
def pooler() -> str:
    """What the application reaches the database through: `none`, or `pgbouncer`."""
    return "none"


@pytest.fixture
def controller() -> str:
    """How cutover reaches the source: `superuser`, or `managed` (a test overrides it)."""
    return "superuser"


def managed_controller(lab: Lab, owner: str, tmp_path: Path) -> dict[str, str]:
    """A source user as managed services give one: no superuser, a member of the owner.

    CREATEROLE, CREATEDB, REPLICATION, membership in the tables' owner, and the
    predefined roles to end and see other roles' sessions. Returns the plan's
    `source` keys for it.
    """
    name, password = f"ctl_{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    with connect(lab.server("source")) as conn:
        load_sql.ensure_login_role(  # type: ignore[arg-type]
            conn, name, password, options="NOSUPERUSER CREATEROLE CREATEDB REPLICATION"
        )
        for granted in (owner, "pg_signal_backend", "pg_read_all_stats"):
            load_sql.grant_role(conn, granted, name)  # type: ignore[arg-type]
    with connect(lab.server("target")) as conn:  # as on Cloud SQL, where both sides have it
        load_sql.ensure_login_role(conn, name, password)  # type: ignore[arg-type]
    secret = tmp_path / "controller.password"
    secret.write_text(password + "\n")
    return {"user": name, "password": f"file:{secret}"}


def apply_superuser_fixes(lab: Lab, plan: Path, cutover: Callable[..., Result]) -> None:
    """Run, as a superuser, the statements `check` names for a source user that is none."""
    checked = cutover("check", "-p", str(plan), "--json")
    assert checked.stdout.startswith("{"), checked.stderr
    report = json.loads(checked.stdout)
    blockers = [
        f
        for f in report["findings"]
        if f["status"] == "FAIL" and f["check"] == "privileges" and f["scope"].startswith("source/")
    ]
    assert blockers, report  # the check must say what a superuser has to do
    for finding in blockers:
        db = finding["scope"].removeprefix("source/")
        with connect(lab.server("source"), db) as conn:
            for fix in finding["fix"]:
                conn.execute(fix)
    again = json.loads(cutover("check", "-p", str(plan), "--json").stdout)
    # What is left is the keyless table, which prepare keys first.
    assert [f["check"] for f in again["findings"] if f["status"] == "FAIL"] == [
        "replica_identity"
    ], again


@pytest.fixture
def tenants() -> int:
    """How many more databases under_load's move carries beside the written one (a test
    overrides it): owned by the application, each a table of rows, none written."""
    return 0


@pytest.fixture
def plan_extra() -> dict[str, Any]:
    """More top-level keys for under_load's plan (a test module overrides it: dms)."""
    return {}


def dms_section(
    stack: ExitStack, lab: Lab, tmp_path: Path, *, flags: dict[str, str] | None = None
) -> dict[str, Any]:
    """A plan's dms section pointing at a stand-in whose DMS jobs replicate between the
    lab's servers (the databases each job selects), served until `stack` closes.

    `flags`: the source instance's flags to begin with (default: DMS's two, on)."""
    return dms_standin(stack, lab, tmp_path, flags=flags)[1]


def dms_standin(
    stack: ExitStack, lab: Lab, tmp_path: Path, *, flags: dict[str, str] | None = None
) -> tuple[Standin, dict[str, Any]]:
    """dms_section's stand-in, for a test that reads its requests, and the section."""
    standin, _ = stack.enter_context(
        lab_standin(
            lab,
            project="lab-project",
            instances={"lab-source": "source", "lab-target": "target"},
            backup_dir=tmp_path / "backups",
            polls_to_done=0,
            delay=0.5,
            period=0.2,
            flags={
                "lab-source": {LOGICAL_DECODING: "on", ENABLE_PGLOGICAL: "on"}
                if flags is None
                else flags
            },
        )
    )
    endpoint = stack.enter_context(standin.serve())
    settings = dms_settings(
        endpoint, source="lab-source", target="lab-target", project="lab-project"
    )
    return standin, settings


def application(
    stack: ExitStack,
    lab: Lab,
    db: str,
    env: Path,
    users: dict[str, str],
    control: int,
    *,
    pooled: bool,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """How the test application reaches `db` on the source, and the plan's writers and
    repoints for it: its env file (`DATABASE_URL`, `WRITER_URL`, a URL of each of `users`,
    in that order) written. The load's control port `control` pauses it; or, `pooled`,
    it connects through PgBouncer (served until `stack` closes), which is paused and
    repointed instead."""
    port = lab.server("source").port
    quoted_db = db.replace('"', "%22").replace(" ", "%20")
    http = f"http://127.0.0.1:{control}"
    actions = {"stop": "pause", "start": "resume", "status": "drained", "health": "healthy"}
    writers: list[dict[str, Any]] = [
        {"name": "app", "http": {key: f"{http}/{path}" for key, path in actions.items()}}
    ]
    repoint: list[dict[str, Any]] = [
        {"name": f"env-{key.lower()}", "file": {"path": str(env), "key": key}}
        for key in ("DATABASE_URL", "WRITER_URL")
    ]
    if pooled:
        pool = stack.enter_context(pgbouncer.running(lab.server("source"), db, users))
        port, quoted_db = pool.port, "app"
        spec = {"pgbouncers": [pool.spec().model_dump(mode="json")], "databases": ["app"]}
        writers = [{"name": "pool", "pgbouncer": spec}]
        repoint = [{"name": "pool", "pgbouncer": spec}]
    env.write_text(
        "".join(
            f"{key}=postgresql://{name}:{password}@127.0.0.1:{port}/{quoted_db}\n"
            for key, (name, password) in zip(
                ("DATABASE_URL", "WRITER_URL"), users.items(), strict=True
            )
        )
    )
    return writers, repoint


@pytest.fixture
def under_load(
    engine: str,
    controller: str,
    pooler: str,
    plan_extra: dict[str, Any],
    tenants: int,
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    tmp_path: Path,
) -> Iterator[Running]:
    """A prepared, started move whose application writes without pause.

    The application owns its database and tables (role `app_*`) and writes as that
    owner and as a second role with table grants only (`clerk_*`); one of its
    tables has no key, so prepare backfills one while it writes. Every error the
    application sees is in the write log.
    """
    db = databases.create()
    tag = uuid.uuid4().hex[:6]
    role, clerk, password = f"app_{tag}", f"clerk_{tag}", uuid.uuid4().hex
    for side in ("source", "target"):
        with connect(lab.server(side)) as conn:
            for name in (role, clerk):
                load_sql.ensure_login_role(conn, name, password)  # type: ignore[arg-type]
    with connect(lab.server("source")) as conn:
        conn.execute(
            psycopg.sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                psycopg.sql.Identifier(db), psycopg.sql.Identifier(role)
            )
        )
    with connect(lab.server("source"), db) as conn:
        load_sql.create_schema(  # type: ignore[arg-type]
            conn, tables=TABLES, writer=clerk, owner=role, keyless=True
        )
        # A report the application reads: populated on the source, refreshed by the move.
        conn.execute(psycopg.sql.SQL("SET ROLE {}").format(psycopg.sql.Identifier(role)))
        conn.execute(VIEW)
        conn.execute("CREATE UNIQUE INDEX ON load_totals (n)")
        conn.execute("RESET ROLE")
    others = tuple(databases.create(prefix="tenant") for _ in range(tenants))
    for other in others:
        with connect(lab.server("source")) as conn:
            conn.execute(
                psycopg.sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                    psycopg.sql.Identifier(other), psycopg.sql.Identifier(role)
                )
            )
        with connect(lab.server("source"), other) as conn:
            conn.execute(psycopg.sql.SQL("SET ROLE {}").format(psycopg.sql.Identifier(role)))
            conn.execute("CREATE TABLE accounts (id bigserial PRIMARY KEY, name text)")
            conn.execute(
                "INSERT INTO accounts (name) SELECT 'a' || g FROM generate_series(1, 100) g"
            )
    source = managed_controller(lab, role, tmp_path) if controller == "managed" else {}
    stack = ExitStack()
    env = tmp_path / "app.env"
    control = free_port()
    users = {role: password, clerk: password}
    writers, repoint = application(
        stack, lab, db, env, users, control, pooled=pooler == "pgbouncer"
    )
    plan = write_plan(
        [db, *others],
        move=f"t{uuid.uuid4().hex[:8]}",
        engine=engine,
        source=source,
        writers=writers,
        repoint=repoint,
        fence={"roles": [role, clerk]},
        thresholds={"lag_window": "1s", "switch_timeout": "5s"},
        **plan_extra,
    )
    log_path = tmp_path / "writes.jsonl"
    handle = log_path.open("a")
    work = load.Load(
        env_file=env,
        keys=("DATABASE_URL", "WRITER_URL"),
        tables=TABLE_NAMES,
        log=load.WriteLog(handle),
        rate=300,
    )
    if controller == "managed" and engine == "pglogical":
        apply_superuser_fixes(lab, plan, cutover)
    thread = threading.Thread(target=work.run, kwargs={"port": control, "duration": None})
    thread.start()
    running = Running(db, plan, engine, role, log_path, work, thread, others)
    try:
        prepared = cutover("prepare", "-p", str(plan))
        assert prepared.code == 0, prepared.stdout + prepared.stderr
        started = cutover("start", "-p", str(plan), "--wait")
        assert started.code == 0, started.stdout + started.stderr
        yield running
    finally:
        running.stop()
        handle.close()
        stack.close()


def nothing_lost(lab: Lab, running: Running, *, writing: float = 1.0) -> load.Audit:
    """Let the load write on for `writing` seconds, stop it, and assert the audit: every
    acknowledged write on the target, none taken by the source after the fence."""
    running.work.stop.wait(writing)
    running.stop()
    outcome = audit(lab, running)
    assert outcome.missing == []
    assert outcome.after_fence == 0
    return outcome


def audit(lab: Lab, running: Running) -> load.Audit:
    """The write log against the target: what was lost, and what errors the application saw."""
    journal = journal_for(load_plan(running.plan))
    fenced = journal.get("all/switch.fence_source")
    with connect(lab.server("target"), running.db) as conn:
        rows = {t: load_sql.rows(conn, t) for t in TABLE_NAMES}  # type: ignore[arg-type]
    return load.audit(
        running.log_path,
        rows,
        source_port=lab.server("source").port,
        fenced_at=fenced.ended_at if fenced else None,
        switch_window=journal.pause_window(phase="switch", scope="all"),
    )


def audit_on_source(lab: Lab, running: Running) -> load.Audit:
    """The write log against the source, once the load stopped: after a rollback, or a
    switch that did not happen. Every error the application saw is counted as an error."""
    with connect(lab.server("source"), running.db) as conn:
        rows = {t: load_sql.rows(conn, t) for t in TABLE_NAMES}  # type: ignore[arg-type]
    return load.audit(running.log_path, rows, source_port=lab.server("source").port, fenced_at=None)


def acked_on(running: Running, port: int) -> int:
    lines = []
    for line in running.log_path.read_text().splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:  # the line the load is writing right now
            continue
    return sum(1 for e in lines if e["ack"] and e.get("port") == port)


def move_of(running: Running) -> str:
    """The move's name, from its plan."""
    return str(yaml.safe_load(running.plan.read_text())["move"])


def ledger_of(running: Running) -> dict[str, dict[str, object]]:
    """The move's step records."""
    return ledger_of_plan(running.plan)


def ledger_of_plan(plan: Path) -> dict[str, dict[str, object]]:
    """The step records of the move of a plan that write_plan wrote."""
    path = next((plan.parent / "state").glob("*.ledger.json"))
    # The document and the log beside it: a killed command has not folded its log in.
    data = FileStore(path.parent, path.name.removesuffix(".ledger.json")).read()
    assert data is not None
    steps: dict[str, dict[str, object]] = data["steps"]
    return steps


def can_login(lab: Lab, role: str) -> bool:
    """Whether the role may log in to the source (False while fenced)."""
    with connect(lab.server("source")) as conn:
        row = conn.execute(
            "SELECT rolcanlogin FROM pg_roles WHERE rolname = %s", (role,)
        ).fetchone()
    assert row is not None
    return bool(row["rolcanlogin"])


def set_replication(
    lab: Lab, running: Running, *, enabled: bool, subscription: str | None = None
) -> None:
    """Stop or resume applying changes on the target, the engine's own way.

    `subscription`: its name when the move's engine did not name it (dms: DMS's job)."""
    name = subscription or f"cutover_{move_of(running)}"
    set_subscription(lab, running.db, running.engine, name, enabled=enabled)


def set_subscription(lab: Lab, db: str, engine: str, name: str, *, enabled: bool) -> None:
    """Enable or disable the target's subscription `name` in `db`, as `engine` makes them."""
    with connect(lab.server("target"), db) as conn:
        if engine in ("pglogical", "dms"):  # DMS replicates with pglogical
            verb = "enable" if enabled else "disable"
            conn.execute(
                psycopg.sql.SQL("SELECT pglogical.{}(%s, true)").format(
                    psycopg.sql.Identifier(f"alter_subscription_{verb}")
                ),
                (name,),
            )
        else:
            conn.execute(
                psycopg.sql.SQL("ALTER SUBSCRIPTION {} {}").format(
                    psycopg.sql.Identifier(name),
                    psycopg.sql.SQL("ENABLE" if enabled else "DISABLE"),
                )
            )


def replication_objects(lab: Lab, db: str) -> dict[str, int]:
    """Slots, subscriptions and publications or replication sets of the move's database."""
    counts = {"slots": 0, "subscriptions": 0, "publications": 0, "extensions": 0}
    for side in ("source", "target"):
        with connect(lab.server(side), db) as conn:
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


# -- what the servers executed, from their logs (tests/integration/test_dry_run.py) ---------------


def logged_statements(text: str) -> list[str]:
    """The statements in a stretch of a lab server's log, written with log_statement = 'all'.

    The lab logs to stderr, one entry per message: a line with the prefix
    (`2026-01-01 10:00:00.123 UTC [4242] LOG:  ...`), then, for a message of
    several lines, one line more each, begun with a tab. The simple protocol
    logs `statement: <text>`, the extended one `execute <name>: <text>`; other
    entries (DETAIL of parameters, warnings, other processes) are skipped.
    """
    entries: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("\t") and entries:
            entries[-1].append(line[1:])
        else:
            entries.append([line])
    statements = []
    for first, *rest in entries:
        if "LOG:  statement: " in first:
            head = first.split("LOG:  statement: ", 1)[1]
        elif "LOG:  execute " in first and ": " in first.split("LOG:  execute ", 1)[1]:
            head = first.split("LOG:  execute ", 1)[1].split(": ", 1)[1]
        else:
            continue
        statements.append("\n".join([head, *rest]))
    return statements


class Recording:
    """The statements each lab server executed between entering and leaving a `with`."""

    def __init__(self, logs: dict[str, Path]) -> None:
        self.logs = logs
        self.start: dict[str, int] = {}
        self.statements: dict[str, list[str]] = {side: [] for side in logs}

    def __enter__(self) -> "Recording":
        self.start = {side: path.stat().st_size for side, path in self.logs.items()}
        return self

    def __exit__(self, *_: object) -> None:
        for side, path in self.logs.items():
            with path.open("rb") as handle:
                handle.seek(self.start[side])
                text = handle.read().decode(errors="replace")
            self.statements[side] = logged_statements(text)


@dataclass
class StatementLog:
    """The lab's servers log every statement of the plan's users while a test runs."""

    lab: Lab

    def logs(self) -> dict[str, Path]:
        state = self.lab.state()
        assert state is not None
        return {i.name: Path(i.logfile) for i in state.instances}

    def recording(self) -> Recording:
        """`with log.recording() as seen:` ...; then `seen.statements[side]`."""
        return Recording(self.logs())


@pytest.fixture
def statement_log(lab: Lab) -> Iterator[StatementLog]:
    """`ALTER ROLE <the plan's user> SET log_statement = 'all'` on both servers, for one test.

    It takes effect in sessions that start afterwards (a command run by the
    test); the setting each role had before is put back.
    """
    setting = psycopg.sql.SQL("ALTER ROLE {} SET log_statement = {}")
    before: dict[str, str | None] = {}
    for side in ("source", "target"):
        role = psycopg.sql.Identifier(lab.controller(side).user)
        with connect(lab.server(side)) as conn:
            row = conn.execute(
                "SELECT (SELECT split_part(s, '=', 2) FROM unnest(r.setconfig) s "
                "WHERE s LIKE 'log\\_statement=%%') AS value FROM pg_db_role_setting r "
                "JOIN pg_roles o ON o.oid = r.setrole WHERE r.setdatabase = 0 AND o.rolname = %s",
                (lab.controller(side).user,),
            ).fetchone()
            before[side] = row["value"] if row else None
            conn.execute(setting.format(role, psycopg.sql.Literal("all")))
    try:
        yield StatementLog(lab)
    finally:
        for side, value in before.items():
            role = psycopg.sql.Identifier(lab.controller(side).user)
            with connect(lab.server(side)) as conn:
                if value is None:
                    conn.execute(psycopg.sql.SQL("ALTER ROLE {} RESET log_statement").format(role))
                else:
                    conn.execute(setting.format(role, psycopg.sql.Literal(value)))


def wait_until(
    predicate: Callable[[], bool], *, seconds: float = 20, what: str = "timed out"
) -> None:
    """Poll until `predicate` holds; fail the test with `what` after `seconds`."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)
