"""The DDL guard (`ddl_guard: true`): while a move runs, the source refuses schema changes
from everyone but cutover, lets rows, temporary tables, grants and refreshes through, and
cleanup removes it."""

import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cutover.lab import Lab
from cutover.pg import load as load_sql
from tests.conftest import Databases, Result, connect
from tests.integration.conftest import managed_controller

pytestmark = pytest.mark.integration

SCHEMA = """
CREATE TABLE items (id int PRIMARY KEY, v int);
CREATE TABLE notes (id int PRIMARY KEY, note text);
INSERT INTO items SELECT g, g FROM generate_series(1, 100) g;
CREATE TYPE mood AS ENUM ('calm');
CREATE VIEW recent AS SELECT * FROM items WHERE id > 90;
CREATE MATERIALIZED VIEW totals AS SELECT 1 AS n, count(*) AS c FROM items;
CREATE UNIQUE INDEX ON totals (n);
"""

REFUSED = (
    "ALTER TABLE items ADD COLUMN extra int",
    "CREATE TABLE other (id int PRIMARY KEY)",
    "DROP TABLE notes CASCADE",  # (pglogical's replication set refuses it without CASCADE)
    "DROP VIEW recent",
    "ALTER TYPE mood ADD VALUE 'glad'",
    "CREATE INDEX ON items (v)",
)
ALLOWED = (
    "INSERT INTO items VALUES ({id}, 1)",
    "UPDATE items SET v = v + 1 WHERE id = {id}",
    "DELETE FROM items WHERE id = {id}",
    "CREATE TEMP TABLE scratch (id int PRIMARY KEY, note text)",
    "INSERT INTO scratch VALUES (1, 'x')",
    "DROP TABLE scratch",
    "REFRESH MATERIALIZED VIEW totals",
    "REFRESH MATERIALIZED VIEW CONCURRENTLY totals",
    "GRANT SELECT ON items TO PUBLIC",
    "REVOKE SELECT ON items FROM PUBLIC",
    "COMMENT ON TABLE items IS 'the shop''s items'",
)


def message(move: str) -> str:
    return (
        f"cutover move {move} is running: DDL is refused on this database until it ends "
        "(cutover cleanup removes this guard)"
    )


def app_database(lab: Lab, databases: Databases) -> tuple[str, str, str, str]:
    """A database the application's role owns, with its tables, and a second superuser.

    Returns the database, the application's role, the DBA's role, and their password.
    """
    db = databases.create()
    tag = uuid.uuid4().hex[:6]
    app, dba, password = f"app_{tag}", f"dba_{tag}", uuid.uuid4().hex
    for side in ("source", "target"):  # the schema copy needs the owner on the target
        with connect(lab.server(side)) as conn:
            load_sql.ensure_login_role(conn, app, password)  # type: ignore[arg-type]
    with connect(lab.server("source")) as conn:
        load_sql.ensure_login_role(  # type: ignore[arg-type]
            conn, dba, password, options="SUPERUSER"
        )
        conn.execute(
            psycopg.sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                psycopg.sql.Identifier(db), psycopg.sql.Identifier(app)
            )
        )
    with connect(lab.server("source"), db) as conn:
        conn.execute(psycopg.sql.SQL("SET ROLE {}").format(psycopg.sql.Identifier(app)))
        conn.execute(SCHEMA)
    return db, app, dba, password


def login(lab: Lab, role: str, password: str, db: str) -> psycopg.Connection[Any]:
    """A session of `role` on the source (its own login: session_user is `role`)."""
    server = lab.server("source")
    return psycopg.connect(
        host=server.host,
        port=server.port,
        user=role,
        password=password,
        dbname=db,
        autocommit=True,
    )


def event_triggers(lab: Lab, db: str, move: str, side: str = "source") -> list[str]:
    with connect(lab.server(side), db) as conn:
        rows = conn.execute(
            "SELECT evtname FROM pg_event_trigger WHERE evtname LIKE %s ORDER BY evtname",
            (f"cutover\\_{move}\\_%",),
        ).fetchall()
    return [r["evtname"] for r in rows]


@pytest.mark.parametrize("engine", ["native", "pglogical"])
def test_the_guard_refuses_ddl_but_not_rows_until_cleanup(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    engine: str,
) -> None:
    db, app, dba, password = app_database(lab, databases)
    move = f"g{uuid.uuid4().hex[:8]}"
    settings: dict[str, Any] = {
        "move": move,
        "engine": engine,
        "thresholds": {"lag_window": "1s", "ready_timeout": "60s"},
    }
    plan = str(write_plan([db], ddl_guard=True, **settings))

    dry = cutover("prepare", "-p", plan, "--dry-run")
    assert dry.code == 0, dry.stdout + dry.stderr
    assert f'CREATE EVENT TRIGGER "cutover_{move}_ddl_guard" ON ddl_command_end' in dry.stdout
    assert f'CREATE EVENT TRIGGER "cutover_{move}_ddl_guard_drop" ON sql_drop' in dry.stdout
    assert event_triggers(lab, db, move) == []  # a dry run creates nothing

    checked = json.loads(cutover("check", "-p", plan, "--json").stdout)
    guard = [f for f in checked["findings"] if f["check"] == "ddl_guard"]
    assert [f["status"] for f in guard] == ["OK"], guard

    prepared = cutover("prepare", "-p", plan)
    assert prepared.code == 0, prepared.stdout + prepared.stderr
    assert f"applied {db}/prepare.guard_source_ddl" in prepared.stdout
    started = cutover("start", "-p", plan, "--wait")
    assert started.code == 0, started.stdout + started.stderr
    assert event_triggers(lab, db, move) == [
        f"cutover_{move}_ddl_guard",
        f"cutover_{move}_ddl_guard_drop",
    ]
    assert event_triggers(lab, db, move, "target") == []  # the schema copy left it out
    again = cutover("prepare", "-p", plan)
    assert again.code == 0 and f"skipped {db}/prepare.guard_source_ddl" in again.stdout
    # The check's warning about event triggers that react to DDL leaves the move's own out.
    checked = json.loads(cutover("check", "-p", plan, "--json").stdout)
    ddl = [f["detail"] for f in checked["findings"] if f["check"] == "ddl"]
    assert not [d for d in ddl if f"cutover_{move}" in d], ddl

    # The application's owner and a superuser alike: each in a session of its own login.
    for number, role in enumerate((app, dba), start=1):
        with login(lab, role, password, db) as conn:
            for statement in REFUSED:
                with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState) as refused:
                    conn.execute(statement)
                assert refused.value.diag.message_primary == message(move), statement
                assert "cleanup" in (refused.value.diag.message_hint or ""), statement
                assert refused.value.diag.message_detail, statement  # the command and object
            for statement in ALLOWED:
                conn.execute(statement.format(id=1000 + number))
            conn.execute(f"INSERT INTO items VALUES ({2000 + number}, 2)")  # rows for the target
    with connect(lab.server("source"), db) as conn:  # every refused command was rolled back
        columns = conn.execute(
            "SELECT count(*) AS n FROM information_schema.columns WHERE table_name = 'items'"
        ).fetchone()
        assert columns is not None and columns["n"] == 2
        assert conn.execute("SELECT to_regclass('other') AS t").fetchone() == {"t": None}
        for kept in ("notes", "recent"):
            assert conn.execute("SELECT to_regclass(%s) AS t", (kept,)).fetchone() == {"t": kept}

    switched = cutover("switch", "-p", plan, "--yes")
    assert switched.code == 0, switched.stdout + switched.stderr
    with connect(lab.server("target"), db) as conn:
        row = conn.execute("SELECT count(*) AS n FROM items WHERE id > 2000").fetchone()
        assert row == {"n": 2}  # replication carried the rows written under the guard

    # A plan that no longer asks for the guard: cleanup removes it all the same.
    plan = str(write_plan([db], **settings))
    cleaned = cutover("cleanup", "-p", plan, "--yes")
    assert cleaned.code == 0, cleaned.stdout + cleaned.stderr
    assert f"applied {db}/cleanup.drop_ddl_guard" in cleaned.stdout
    assert f'DROP EVENT TRIGGER IF EXISTS "cutover_{move}_ddl_guard"' in cleaned.stdout
    assert event_triggers(lab, db, move) == []
    with login(lab, dba, password, db) as conn:
        conn.execute("ALTER TABLE items ADD COLUMN extra int")
        conn.execute("CREATE TABLE other (id int PRIMARY KEY)")
        conn.execute("DROP TABLE other")
        guard = conn.execute(
            "SELECT count(*) FROM pg_proc WHERE proname = %s", (f"cutover_{move}_ddl_guard",)
        ).fetchone()
        assert guard == (0,)


def test_a_source_user_that_is_no_superuser_is_told_before_anything_is_made(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    tmp_path: Path,
) -> None:
    db, app, _, _ = app_database(lab, databases)
    move = f"g{uuid.uuid4().hex[:8]}"
    plan = str(
        write_plan([db], move=move, ddl_guard=True, source=managed_controller(lab, app, tmp_path))
    )
    checked = json.loads(cutover("check", "-p", plan, "--json").stdout)
    guard = [f for f in checked["findings"] if f["check"] == "ddl_guard"]
    assert [f["status"] for f in guard] == ["FAIL"], guard
    assert "ddl_guard: false" in guard[0]["hint"]

    prepared = cutover("prepare", "-p", plan)
    assert prepared.code == 1, prepared.stdout + prepared.stderr
    assert prepared.stderr.startswith(f"FAILED: {db}/prepare.guard_source_ddl: ")
    assert "may not create event triggers, which ddl_guard: true needs" in prepared.stderr
    assert "hint: an event trigger needs a superuser" in prepared.stderr
    assert "Traceback" not in prepared.stderr
    assert event_triggers(lab, db, move) == []
    with connect(lab.server("source"), db) as conn:  # nor the function: nothing was made
        row = conn.execute(
            "SELECT count(*) AS n FROM pg_proc WHERE proname = %s", (f"cutover_{move}_ddl_guard",)
        ).fetchone()
        assert row == {"n": 0}
