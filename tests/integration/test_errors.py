"""Real PostgreSQL errors, provoked on the lab servers, shown as one line with a hint."""

import traceback
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import make_conninfo

from cutover import api
from cutover.errors import ConnectionFailed, Retryable, StepFailed
from cutover.lab import Lab
from cutover.log import MASK
from cutover.pg.connect import Connection, conninfo
from cutover.pg.connect import connect as cutover_connect
from cutover.pg.errors import translate
from cutover.pg.ident import quote
from cutover.phases import start as starting
from cutover.plan import Server
from tests.conftest import Databases, Result, connect

pytestmark = pytest.mark.integration

TABLE = ("public", "Log lines")


@pytest.fixture
def role(lab: Lab, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str]:
    """A login role with no privilege on the source, and its password (also in ERR_PASSWORD)."""
    name, password = f"err {uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    with connect(lab.server("source")) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
    monkeypatch.setenv("ERR_PASSWORD", password)
    return name, password


def as_role(lab: Lab, role: str) -> Server:
    return lab.server("source").model_copy(update={"user": role, "password": "env:ERR_PASSWORD"})


def run_as(lab: Lab, db: str, statement: str | sql.Composed) -> None:
    with connect(lab.server("source"), db) as conn:
        conn.execute(statement)


def test_a_missing_grant_names_the_server_the_statement_and_the_grant(
    lab: Lab, databases: Databases, role: tuple[str, str]
) -> None:
    name, _ = role
    db = databases.create()
    run_as(lab, db, 'CREATE SCHEMA shop; CREATE TABLE shop."Items" (id int)')
    run_as(lab, db, sql.SQL("GRANT USAGE ON SCHEMA shop TO {}").format(sql.Identifier(name)))
    count = sql.SQL("SELECT count(*) AS n FROM {}").format(sql.Identifier("shop", "Items"))
    with cutover_connect(as_role(lab, name), db, label="source") as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as raised:
            conn.execute(count)
        translated = translate(raised.value, step=f"{db}/prepare.copy_schema")
        assert isinstance(translated, StepFailed)
        assert translated.message == (
            f"{db}/prepare.copy_schema: on source/{db} as {name}: 42501 insufficient privilege: "
            'permission denied for table Items; statement: SELECT count(*) AS n FROM "shop"."Items"'
        )
        grant = f'GRANT SELECT ON TABLE "shop"."Items" TO {quote(name)};'
        assert (
            translated.hint
            == f'as the owner of table "shop"."Items" (or a superuser), run: {grant}'
        )
        # The hint is the fix: run as printed, the statement works.
        run_as(lab, db, grant)
        assert conn.execute(count).fetchone() == {"n": 0}


def test_a_lock_timeout_is_retryable_and_keeps_its_type(lab: Lab, databases: Databases) -> None:
    db = databases.create("target")
    with connect(lab.server("target"), db) as holder:
        holder.execute("CREATE TABLE busy (v int)")
        with holder.transaction():
            holder.execute("LOCK TABLE busy")
            with cutover_connect(lab.server("target"), db, label="target") as conn:
                conn.execute("SET lock_timeout = '50ms'")
                with pytest.raises(psycopg.errors.LockNotAvailable) as raised:
                    conn.execute(sql.SQL("ALTER TABLE {} ADD x int").format(sql.Identifier("busy")))
    translated = translate(raised.value)
    assert isinstance(translated, Retryable)
    assert translated.message == (
        f"on target/{db} as postgres: 55P03 lock not available: canceling statement due to "
        'lock timeout; statement: ALTER TABLE "busy" ADD x int'
    )
    assert "pg_blocking_pids" in translated.hint


def test_a_failing_statement_never_shows_its_password(lab: Lab) -> None:
    secret = f"pw-{uuid.uuid4().hex}"
    nobody = f"nobody {uuid.uuid4().hex[:6]}"
    with cutover_connect(lab.server("source"), label="source") as conn:
        with pytest.raises(psycopg.errors.UndefinedObject) as raised:
            conn.execute(
                sql.SQL("ALTER ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(nobody), sql.Literal(secret)
                )
            )
        verifier = conn.pgconn.encrypt_password(secret.encode(), b"x", b"scram-sha-256").decode()
        with pytest.raises(psycopg.errors.DuplicateObject) as duplicate:
            conn.execute(sql.SQL("CREATE ROLE postgres PASSWORD {}").format(sql.Literal(verifier)))
    translated = translate(raised.value)
    assert translated is not None
    assert translated.message == (
        f'on source/postgres as postgres: 42704 undefined object: role "{nobody}" does not '
        f"exist; statement: ALTER ROLE {quote(nobody)} LOGIN PASSWORD '{MASK}'"
    )
    assert "undefined object (42704)" in translated.hint
    shown = translate(duplicate.value)
    assert shown is not None
    assert shown.message.endswith(f"statement: CREATE ROLE postgres PASSWORD '{MASK}'")
    tracebacks = "".join(
        "".join(traceback.format_exception(e)) for e in (raised.value, duplicate.value)
    )
    assert f"PASSWORD '{MASK}'" in tracebacks  # the statement is in the traceback, masked
    for text in (translated.message, shown.message, tracebacks):
        assert secret not in text
        assert verifier.split("$")[1] not in text


def test_a_lost_connection_is_resumable(lab: Lab) -> None:
    conn: Connection = cutover_connect(lab.server("source"), label="source")
    with connect(lab.server("source")) as admin:
        admin.execute("SELECT pg_catalog.pg_terminate_backend(%s)", (conn.info.backend_pid,))
    with pytest.raises(psycopg.OperationalError) as raised:
        conn.execute("SELECT 1")
    conn.close()
    translated = translate(raised.value)
    assert isinstance(translated, ConnectionFailed)
    assert translated.message.startswith("on source/postgres as postgres: 57P01 admin shutdown: ")
    assert "resumable: run it again" in translated.hint


# -- through the command line -------------------------------------------------------------------


def test_a_step_without_privilege_fails_with_one_line_and_the_fix(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    role: tuple[str, str],
) -> None:
    name, password = role
    db = databases.create()
    run_as(lab, db, f"CREATE TABLE {quote(TABLE)} (v int); INSERT INTO {quote(TABLE)} VALUES (1)")
    plan = str(write_plan([db], source={"user": name, "password": "env:ERR_PASSWORD"}))
    env = {"ERR_PASSWORD": password}
    key = f"{db}/backfill {quote(TABLE)}.add_column"

    result = cutover("backfill", "-p", plan, env=env)
    assert result.code == 1, result.stdout + result.stderr
    assert result.stderr.startswith(
        f"FAILED: {key}: on source/{db} as {name}: 42501 insufficient privilege: "
        f"must be owner of table Log lines; statement: ALTER TABLE {quote(TABLE)} ADD COLUMN"
    )
    assert f"\nhint: only the owner of table {quote(TABLE)} may do this" in result.stderr
    assert f"GRANT <owner of {quote(TABLE)}> TO {quote(name)};" in result.stderr
    assert "Traceback" not in result.stderr
    assert password not in result.stdout + result.stderr

    verbose = cutover("--verbose", "backfill", "-p", plan, env=env)
    assert verbose.code == 1
    assert "Traceback" in verbose.stderr
    assert "psycopg.errors.InsufficientPrivilege: must be owner of table Log lines" in (
        verbose.stderr
    )
    assert verbose.stderr.splitlines()[-2].startswith(f"FAILED: {key}: ")

    # Owning the table, the role needs to create the key's sequence: the hint's GRANT does it.
    run_as(lab, db, f"ALTER TABLE {quote(TABLE)} OWNER TO {quote(name)}")
    result = cutover("backfill", "-p", plan, env=env)
    assert result.code == 1
    assert "42501 insufficient privilege: permission denied for schema public" in result.stderr
    grant = f'GRANT CREATE ON SCHEMA "public" TO {quote(name)};'
    assert result.stderr.rstrip().endswith(f"run: {grant}")
    run_as(lab, db, grant)
    result = cutover("backfill", "-p", plan, env=env)
    assert result.code == 0, result.stdout + result.stderr


def test_a_database_error_outside_a_step_is_one_line_too(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    role: tuple[str, str],
) -> None:
    name, password = role
    db = databases.create()
    # Catalog privileges are per database: here the role cannot list the tables.
    run_as(lab, db, "REVOKE SELECT ON pg_catalog.pg_class FROM PUBLIC")
    plan = str(write_plan([db], source={"user": name, "password": "env:ERR_PASSWORD"}))
    result = cutover("check", "-p", plan, env={"ERR_PASSWORD": password})
    assert result.code == 1, result.stdout + result.stderr
    assert result.stderr.startswith(
        f"FAILED: on source/{db} as {name}: 42501 insufficient privilege: "
        "permission denied for table pg_class; statement: "
    )
    assert result.stderr.rstrip().endswith(
        f'run: GRANT SELECT ON TABLE "pg_catalog"."pg_class" TO {quote(name)};'
    )
    assert "Traceback" not in result.stderr


def test_a_subscription_that_finds_no_free_replication_worker_is_told_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The target's one logical replication worker serves another subscription: start
    says so and what to raise, instead of sending the operator to the target's log."""
    own = Lab(tmp_path / "lab", settings={"max_logical_replication_workers": "1"})
    own.up(sample=False)
    try:
        for side in ("source", "target"):
            with connect(own.server(side)) as conn:
                conn.execute("CREATE DATABASE feed")
            with connect(own.server(side), "feed") as conn:
                conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        with connect(own.server("source"), "feed") as conn:
            conn.execute("CREATE PUBLICATION feed FOR TABLE t")
        publisher = make_conninfo(**conninfo(own.server("source"), "feed", label="source"))
        with connect(own.server("target"), "feed") as conn:
            conn.execute(
                sql.SQL("CREATE SUBSCRIPTION feed CONNECTION {} PUBLICATION feed").format(
                    sql.Literal(publisher)
                )
            )
        with connect(own.server("source")) as conn:
            conn.execute("CREATE DATABASE shop")
        with connect(own.server("source"), "shop") as conn:
            conn.execute("CREATE TABLE items (id bigserial PRIMARY KEY, v text)")
        plan = own.plan(["shop"], move="crowded").model_copy(update={"state_dir": tmp_path})
        monkeypatch.setattr(starting, "CONNECT_SECONDS", 3.0)
        api.prepare(plan, restart=False, dry_run=False)
        with pytest.raises(StepFailed) as failed:
            api.start(plan, jobs=1, dry_run=False)
        assert failed.value.message == (
            "shop/start.wait_for_catchup: the subscription of shop has not connected to the "
            "source within 3 s: all 1 "
            "logical replication workers of the target are busy (1 running for subscriptions)"
        )
        assert "raise max_logical_replication_workers on the target" in failed.value.hint
    finally:
        own.down(purge=True)
