"""`cutover check` on real servers: each check trips on a database built to trip it."""

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from cutover import preflight
from cutover.lab import Lab, free_port
from cutover.pg import catalog
from cutover.pg.connect import pool
from cutover.plan import dump
from tests.conftest import Databases, Result, connect

pytestmark = pytest.mark.integration

CLEAN_SCHEMA = """
CREATE TABLE parent (id bigserial PRIMARY KEY, name text);
CREATE TABLE child (id bigserial PRIMARY KEY, parent_id bigint REFERENCES parent (id));
INSERT INTO parent (name) SELECT 'p' || g FROM generate_series(1, 10) g;
INSERT INTO child (parent_id) SELECT 1 + g % 10 FROM generate_series(1, 50) g;
"""

TRIPPING_SCHEMA = """
CREATE SCHEMA "we""ird schema";
CREATE TABLE "we""ird schema"."Tä ""b"" le" (v text);
CREATE TABLE nothing_identity (id int PRIMARY KEY, v text);
ALTER TABLE nothing_identity REPLICA IDENTITY NOTHING;
CREATE TABLE full_identity (v text);
ALTER TABLE full_identity REPLICA IDENTITY FULL;
CREATE UNLOGGED TABLE "Cache Tbl" (k text PRIMARY KEY, v text);
CREATE TABLE "Parent Tbl" ("Key Col" int PRIMARY KEY);
CREATE TABLE "Child Tbl" (id int PRIMARY KEY, "Parent Ref" int);
INSERT INTO "Parent Tbl" VALUES (1), (2);
INSERT INTO "Child Tbl" VALUES (1, 1), (2, 7), (3, 8), (4, NULL);
ALTER TABLE "Child Tbl" ADD CONSTRAINT "child→parent" FOREIGN KEY ("Parent Ref")
    REFERENCES "Parent Tbl" ("Key Col") NOT VALID;
CREATE MATERIALIZED VIEW counts AS SELECT count(*) AS n FROM "Parent Tbl";
SELECT lo_create(0);
CREATE FUNCTION ddl_note() RETURNS event_trigger LANGUAGE plpgsql AS $$ BEGIN END $$;
CREATE EVENT TRIGGER "note ddl" ON ddl_command_end EXECUTE FUNCTION ddl_note();
"""


def build(lab: Lab, db: str, script: str, side: str = "source") -> None:
    with connect(lab.server(side), db) as conn:
        conn.execute(script)


def findings(result: Result) -> dict[tuple[str, str, str], dict[str, Any]]:
    """Findings by (server, check, status)."""
    report = json.loads(result.stdout)
    return {(f["scope"].split("/")[0], f["check"], f["status"]): f for f in report["findings"]}


def test_a_clean_database_is_ready(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    db = databases.create()
    build(lab, db, CLEAN_SCHEMA)
    result = cutover("check", "-p", str(write_plan([db])))
    assert result.code == 0, result.stdout + result.stderr
    assert "READY: 0 blockers, 0 warnings" in result.stdout
    assert "1 foreign key, no row points at nothing" in result.stdout
    assert "switch --keep-fallback is possible" in result.stdout
    assert "FAIL" not in result.stdout


def test_every_problem_is_found_with_its_fix(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    db = databases.create()
    build(lab, db, TRIPPING_SCHEMA)
    result = cutover("check", "-p", str(write_plan([db])), "--json")
    assert result.code == 1, result.stderr
    found = findings(result)
    report = json.loads(result.stdout)
    assert report["ready"] is False

    identity = found[("source", "replica_identity", "FAIL")]
    assert identity["detail"] == (
        '1 table without a primary key or replica identity: "public"."nothing_identity"'
    )
    assert identity["fix"] == ['ALTER TABLE "public"."nothing_identity" REPLICA IDENTITY DEFAULT;']
    warned = [f for f in report["findings"] if f["check"] == "replica_identity"]
    keyed, full = (f["detail"] for f in warned if f["status"] == "WARN")
    assert keyed.startswith("1 table without a primary key, which `cutover prepare` adds")
    assert keyed.endswith('"we""ird schema"."Tä ""b"" le"')
    assert full == '1 table with REPLICA IDENTITY FULL: "public"."full_identity"'

    unlogged = found[("source", "unlogged_tables", "WARN")]
    assert unlogged["detail"] == (
        "1 unlogged table, copied once at start, changes after it are not carried: "
        '"public"."Cache Tbl"'
    )
    assert unlogged["fix"] == ['ALTER TABLE "public"."Cache Tbl" SET LOGGED;']
    assert found[("source", "large_objects", "FAIL")]["detail"] == (
        "1 large object (0 B): logical replication does not carry them"
    )
    views = found[("source", "materialized_views", "WARN")]
    assert views["detail"] == (
        '1 materialized view: "public"."counts" refreshed on the target after the copy and '
        "after the switch"
    )
    assert views["fix"] == []
    assert "note ddl (ddl_command_end)" in found[("source", "ddl", "WARN")]["detail"]

    orphans = found[("source", "foreign_key_orphans", "FAIL")]
    assert orphans["detail"].startswith('2 rows of "public"."Child Tbl"("Parent Ref") -> ')
    assert "child→parent" in orphans["detail"]
    # The printed query lists exactly the orphan rows, hostile names and all.
    with connect(lab.server("source"), db) as conn:
        rows = conn.execute(orphans["fix"][0]).fetchall()
        assert sorted(r["Parent Ref"] for r in rows) == [7, 8]
        # The printed fixes run as they are.
        conn.execute(unlogged["fix"][0])
        conn.execute(identity["fix"][0])
    again = findings(cutover("check", "-p", str(write_plan([db])), "--json"))
    assert ("source", "unlogged_tables", "WARN") not in again
    assert ("source", "replica_identity", "FAIL") not in again  # prepare adds its key now


def test_the_human_report_shows_hints_and_fixes(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    db = databases.create()
    build(lab, db, TRIPPING_SCHEMA)
    result = cutover("check", "-p", str(write_plan([db])))
    assert result.code == 1
    assert "NOT READY: 3 blockers, 5 warnings" in result.stdout
    assert 'ALTER TABLE "public"."Cache Tbl" SET LOGGED;' in result.stdout
    assert "Traceback" not in result.stderr


def test_a_missing_source_database_is_a_blocker(
    write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    result = cutover("check", "-p", str(write_plan(["no such db"])), "--json")
    assert result.code == 1
    assert findings(result)[("source", "database", "FAIL")]["detail"] == (
        'database "no such db" does not exist on the source'
    )


@pytest.fixture
def unprivileged(lab: Lab) -> tuple[str, str, str]:
    """A login role without any right on both servers, its password, and an owner role."""
    tag = uuid.uuid4().hex[:6]
    role, owner, password = f"ck {tag}", f"owner_{tag}", uuid.uuid4().hex
    for side in ("source", "target"):
        with connect(lab.server(side)) as conn:
            conn.execute(f"CREATE ROLE \"{role}\" LOGIN PASSWORD '{password}'")
    with connect(lab.server("source")) as conn:
        conn.execute(f"CREATE ROLE {owner}")
    return role, password, owner


def test_missing_privileges_come_with_the_statements_that_grant_them(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    unprivileged: tuple[str, str, str],
) -> None:
    role, password, owner = unprivileged
    db = databases.create()
    build(
        lab,
        db,
        f"""
        CREATE SCHEMA shop AUTHORIZATION {owner};
        SET ROLE {owner};
        CREATE TABLE shop.items (id bigserial PRIMARY KEY, name text);
        RESET ROLE;
        """,
    )
    writer = f"writer_{uuid.uuid4().hex[:6]}"  # an application role ck is no member of
    with connect(lab.server("source")) as conn:
        conn.execute(f"CREATE ROLE {writer} LOGIN")
    plan = write_plan(
        [db],
        source={"user": role, "password": "env:CK_PASSWORD"},
        target={"user": role, "password": "env:CK_PASSWORD"},
        fence={"roles": [writer]},
    )
    result = cutover("check", "-p", str(plan), "--json", env={"CK_PASSWORD": password})
    assert result.code == 1, result.stderr
    assert password not in result.stdout + result.stderr
    report = json.loads(result.stdout)
    fixes: dict[str, list[str]] = {}
    for f in report["findings"]:
        if f["check"] == "privileges":
            fixes.setdefault(f["scope"], []).extend(f["fix"])
    quoted = '"' + role + '"'
    # No superuser: the fence needs CREATEROLE, pg_signal_backend for roles it is not a
    # member of, and pg_read_all_stats to see who still writes.
    assert fixes["source"] == [
        f"ALTER ROLE {quoted} REPLICATION;",
        f"ALTER ROLE {quoted} CREATEROLE;",
        f"GRANT pg_signal_backend TO {quoted};",
        f"GRANT pg_read_all_stats TO {quoted};",
    ]
    assert fixes[f"source/{db}"] == [
        f'GRANT CONNECT, CREATE ON DATABASE "{db.replace(chr(34), chr(34) * 2)}" TO {quoted};',
        f'GRANT USAGE ON SCHEMA "shop" TO {quoted};',
        f'GRANT SELECT ON ALL TABLES IN SCHEMA "shop" TO {quoted};',
        f'GRANT SELECT ON ALL SEQUENCES IN SCHEMA "shop" TO {quoted};',
        f'GRANT "{owner}" TO {quoted};',
    ]
    # The database does not exist on the target yet: prepare must be able to create it.
    assert fixes["target"] == [f"ALTER ROLE {quoted} SUPERUSER;", f"ALTER ROLE {quoted} CREATEDB;"]

    # Running exactly what was printed makes the check pass.
    with connect(lab.server("source")) as conn:
        for statement in fixes["source"]:
            conn.execute(statement)
    with connect(lab.server("source"), db) as conn:
        for statement in fixes[f"source/{db}"]:
            conn.execute(statement)
    with connect(lab.server("target")) as conn:
        for statement in fixes["target"]:
            conn.execute(statement)
    result = cutover("check", "-p", str(plan), "--json", env={"CK_PASSWORD": password})
    privileges = [f for f in json.loads(result.stdout)["findings"] if f["check"] == "privileges"]
    assert [f["status"] for f in privileges] == ["OK", "OK", "OK", "OK"], privileges


def test_rows_a_restricted_user_may_not_read_are_a_finding_with_the_grant(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    unprivileged: tuple[str, str, str],
) -> None:
    """The orphan-rows check reads both tables of a foreign key: without SELECT, a finding."""
    role, password, _ = unprivileged
    db = databases.create()
    build(lab, db, CLEAN_SCHEMA)
    plan = write_plan(
        [db],
        source={"user": role, "password": "env:CK_PASSWORD"},
        target={"user": role, "password": "env:CK_PASSWORD"},
    )
    result = cutover("check", "-p", str(plan), "--json", env={"CK_PASSWORD": password})
    assert result.code == 1, result.stderr
    assert result.stdout.startswith("{"), result.stderr  # a report, not one error
    orphans = findings(result)[("source", "foreign_key_orphans", "FAIL")]
    quoted = '"' + role + '"'
    assert orphans["detail"] == (
        f'{role} may not read "public"."child", "public"."parent": rows that point at '
        "nothing cannot be looked for (1 foreign key)"
    )
    assert orphans["fix"] == [
        f'GRANT SELECT ON TABLE "public"."child", "public"."parent" TO {quoted};'
    ]
    with connect(lab.server("source"), db) as conn:
        conn.execute(orphans["fix"][0])
    again = findings(cutover("check", "-p", str(plan), "--json", env={"CK_PASSWORD": password}))
    assert again[("source", "foreign_key_orphans", "OK")]["detail"] == (
        "1 foreign key, no row points at nothing"
    )


def test_rows_already_on_the_target_are_a_blocker_as_start_says(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    """The schema made by hand on the target is adopted; rows there stop the move early."""
    db = databases.create()
    build(lab, db, CLEAN_SCHEMA)
    with connect(lab.server("target")) as conn:
        conn.execute(f'CREATE DATABASE "{db.replace(chr(34), chr(34) * 2)}"')
    build(lab, db, CLEAN_SCHEMA, side="target")
    plan = str(write_plan([db]))
    result = cutover("check", "-p", plan, "--json")
    assert result.code == 1, result.stdout + result.stderr
    rows = findings(result)[("target", "target_rows", "FAIL")]
    assert rows["detail"] == (
        f'tables of {db} on the target already hold rows: "public"."child", "public"."parent"'
    )
    assert rows["hint"].startswith("the initial copy fills empty tables")
    assert "NOT READY: 1 blocker" in cutover("check", "-p", plan).stdout

    prepared = cutover("prepare", "-p", plan)
    assert prepared.code == 0, prepared.stdout + prepared.stderr  # nothing to create by hand
    started = cutover("start", "-p", plan, "--wait")
    assert started.code == 1
    said = " ".join(started.stderr.split())
    assert f"{rows['detail']} hint: {rows['hint']}" in said

    # Emptied as the hint says, the move goes on; the rows it copies are its own.
    with connect(lab.server("target"), db) as conn:
        conn.execute("TRUNCATE child, parent")
    emptied = findings(cutover("check", "-p", plan, "--json"))
    assert emptied[("target", "target_rows", "OK")]["detail"] == (
        "2 tables already on the target, all empty"
    )
    started = cutover("start", "-p", plan, "--wait")
    assert started.code == 0, started.stdout + started.stderr
    copied = cutover("check", "-p", plan, "--json")
    assert [f for f in json.loads(copied.stdout)["findings"] if f["check"] == "target_rows"] == []


def test_a_target_role_without_createdb_is_told_to_get_it(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    unprivileged: tuple[str, str, str],
) -> None:
    role, password, _ = unprivileged
    db = databases.create()
    plan = write_plan([db], target={"user": role, "password": "env:CK_PASSWORD"})
    result = cutover("check", "-p", str(plan), "--json", env={"CK_PASSWORD": password})
    target = [f for f in json.loads(result.stdout)["findings"] if f["scope"] == "target"]
    fixes = [fix for f in target for fix in f["fix"]]
    assert f'ALTER ROLE "{role}" CREATEDB;' in fixes


@pytest.fixture(scope="session")
def plain_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Servers as an ordinary PostgreSQL comes: no logical decoding, no room for replication."""
    the_lab = Lab(
        tmp_path_factory.mktemp("plain"),
        settings={
            "wal_level": "replica",
            "max_replication_slots": "0",
            "max_wal_senders": "0",
            "max_logical_replication_workers": "0",
            "max_worker_processes": "2",
            "shared_preload_libraries": "''",
            "track_commit_timestamp": "off",
        },
    )
    the_lab.up(sample=False)
    yield the_lab
    the_lab.down(purge=True)


def test_replication_settings_are_checked_with_the_values_to_set(
    plain_lab: Lab, tmp_path: Path, cutover: Callable[..., Result]
) -> None:
    plan = tmp_path / "plan.yaml"
    data = yaml.safe_load(yaml.safe_dump(plain_lab.plan(["postgres"]).model_dump(mode="json")))
    data["state_dir"] = str(tmp_path)
    plan.write_text(yaml.safe_dump(data))
    # Two subscriptions of the target's, enabled, each needing an apply worker of its own.
    others = ["orders_feed", "audit_feed"]
    with connect(plain_lab.server("target")) as conn:
        for name in others:
            conn.execute(
                f"CREATE SUBSCRIPTION {name} CONNECTION 'host=192.0.2.1 dbname=x' "
                "PUBLICATION p WITH (connect = false)"
            )
            conn.execute(f"ALTER SUBSCRIPTION {name} ENABLE")
    try:
        result = cutover("check", "-p", str(plan), "--json")
    finally:
        with connect(plain_lab.server("target")) as conn:
            for name in others:
                conn.execute(f"ALTER SUBSCRIPTION {name} DISABLE")
                conn.execute(f"ALTER SUBSCRIPTION {name} SET (slot_name = NONE)")
                conn.execute(f"DROP SUBSCRIPTION {name}")
    assert result.code == 1, result.stderr
    found = findings(result)
    assert found[("source", "wal_level", "FAIL")]["fix"] == [
        "ALTER SYSTEM SET wal_level = 'logical';"
    ]
    assert found[("source", "max_replication_slots", "FAIL")]["fix"] == [
        "ALTER SYSTEM SET max_replication_slots = 3;"
    ]
    assert found[("source", "max_wal_senders", "FAIL")]["fix"] == [
        "ALTER SYSTEM SET max_wal_senders = 3;"
    ]
    workers = found[("target", "max_logical_replication_workers", "FAIL")]
    assert workers["fix"] == ["ALTER SYSTEM SET max_logical_replication_workers = 4;"]
    assert workers["detail"].endswith(
        "(1 apply workers and at least one table copy at a time, beside 2 other enabled "
        "subscriptions' apply workers)"
    )
    assert found[("target", "max_worker_processes", "FAIL")]["fix"] == [
        "ALTER SYSTEM SET max_worker_processes = 4;"
    ]
    fallback = found[("target", "fallback", "WARN")]
    assert "the target's wal_level is replica" in fallback["detail"]
    assert "the target has no free replication slot" in fallback["detail"]


def test_pglogical_needs_are_checked_with_the_statements_to_run(
    plain_lab: Lab, tmp_path: Path, cutover: Callable[..., Result]
) -> None:
    plan = tmp_path / "plan.yaml"
    data = yaml.safe_load(yaml.safe_dump(plain_lab.plan(["postgres"]).model_dump(mode="json")))
    data.update(state_dir=str(tmp_path), engine="pglogical")
    plan.write_text(yaml.safe_dump(data))
    result = cutover("check", "-p", str(plan), "--json")
    assert result.code == 1, result.stderr
    found = findings(result)
    for side in ("source", "target"):
        preload = found[(side, "pglogical", "FAIL")]
        assert preload["detail"] == "pglogical is not in shared_preload_libraries"
        assert preload["fix"] == ["ALTER SYSTEM SET shared_preload_libraries = 'pglogical';"]
        assert found[(side, "track_commit_timestamp", "WARN")]["fix"] == [
            "ALTER SYSTEM SET track_commit_timestamp = on;"
        ]
        # 2 + a manager for each connectable database (postgres, template1) + 2 per moved one
        workers = found[(side, "pglogical_workers", "FAIL")]
        assert workers["fix"] == ["ALTER SYSTEM SET max_worker_processes = 6;"]


def test_an_extension_the_target_cannot_install_is_a_blocker(
    lab: Lab, databases: Databases
) -> None:
    db = databases.create()
    build(lab, db, "CREATE EXTENSION pg_trgm; CREATE EXTENSION hstore;")
    plan = lab.plan([db])
    with pool({"source": plan.source, "target": plan.target}) as connections:
        conn = connections.get("source", db)
        everything = catalog.available_extensions(connections.get("target"))
        version = catalog.server_version(connections.get("target"))
        target = preflight.Extensions(frozenset(everything), version)
        assert [f.status for f in preflight._extensions(conn, "s", target)] == ["OK"]
        lacking = preflight.Extensions(frozenset(everything - {"hstore"}), version)
        [finding] = preflight._extensions(conn, "s", lacking)
    assert finding.status is preflight.Status.FAIL
    major = version // 10000
    assert finding.detail == (
        f"1 extension not available on the target: hstore (contrib: part of postgresql-{major})"
    )
    assert finding.fix == (f"apt-get install postgresql-{major}",)
    assert "cloud" not in finding.detail and "console or flags" in finding.hint


def test_an_unreachable_server_is_one_line_and_exit_2(
    write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    port = free_port()
    result = cutover("check", "-p", str(write_plan(["app"], target={"port": port})))
    assert result.code == 2
    assert result.stderr.startswith(
        f"FAILED: cannot connect to target (127.0.0.1:{port}/postgres as postgres):"
    )
    assert "Traceback" not in result.stderr
    assert "hint: check target.host/port/user" in result.stderr.replace("\n", " ")


def test_a_wrong_password_is_exit_2_and_never_printed(
    write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    plan = write_plan(["app"], source={"password": "env:WRONG_PW"})
    result = cutover("check", "-p", str(plan), env={"WRONG_PW": "not-the-password-42"})
    assert result.code == 2
    assert "password authentication failed" in result.stderr
    assert "not-the-password-42" not in result.stdout + result.stderr


def test_a_broken_plan_is_exit_2_with_the_path_of_each_mistake(
    tmp_path: Path, cutover: Callable[..., Result]
) -> None:
    plan = tmp_path / "plan.yaml"
    plan.write_text(
        yaml.safe_dump(
            {
                "move": "m",
                "source": {"host": "h", "user": "u", "password": "plaintext!"},
                "target": {"host": "h", "user": "u", "prot": 5432},
                "databases": ["app"],
            }
        )
    )
    result = cutover("check", "-p", str(plan))
    assert result.code == 2
    assert "source.password: a literal secret is not allowed" in result.stderr
    assert "target.prot: unknown key; did you mean 'port'?" in result.stderr
    assert "plaintext!" not in result.stderr


def test_each_writer_and_repoint_that_would_stop_the_switch_is_a_blocker(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    kubeconfig: Path,
    tmp_path: Path,
) -> None:
    db = databases.create()
    build(lab, db, CLEAN_SCHEMA)
    env_ok, env_keyless = tmp_path / "ok.env", tmp_path / "keyless.env"
    env_ok.write_text("DATABASE_URL=postgresql://app@old-host:5432/app\n")
    env_keyless.write_text("OTHER=1\n")
    k8s = {"kubeconfig": str(kubeconfig), "namespace": "shop"}
    closed = {"host": "127.0.0.1", "port": free_port(), "user": "pgbouncer"}
    plan = write_plan(
        [db],
        writers=[
            {"name": "cron", "command": {"stop": ["no-such-program-x1"], "start": ["true"]}},
            {"name": "web", "tier": 1, "kubernetes": {**k8s, "deployments": ["ghost"]}},
            {"name": "pool", "tier": 1, "pgbouncer": {"pgbouncers": [closed], "databases": [db]}},
        ],
        repoint=[
            {"name": "good", "file": {"path": str(env_ok), "key": "DATABASE_URL"}},
            {"name": "keyless", "file": {"path": str(env_keyless), "key": "DATABASE_URL"}},
            {"name": "gone", "file": {"path": str(tmp_path / "gone.env"), "key": "DATABASE_URL"}},
            {"name": "secret", "kubernetes": {**k8s, "secret": "db", "key": "DATABASE_URL"}},
        ],
    )
    result = cutover("check", "-p", str(plan), "--json")
    assert result.code == 1, result.stdout + result.stderr
    by_scope: dict[str, list[tuple[str, str]]] = {}
    for f in json.loads(result.stdout)["findings"]:
        by_scope.setdefault(f["scope"], []).append((f["status"], f["detail"]))
    assert by_scope["writer/cron"] == [
        ("FAIL", "the stop command's program 'no-such-program-x1' is not found or not executable")
    ]
    [(status, detail)] = by_scope["writer/web"]
    assert status == "FAIL" and "deployment/ghost" in detail and "HTTP 404" in detail, detail
    [(status, detail)] = by_scope["writer/pool"]
    assert status == "FAIL" and str(closed["port"]) in detail, detail
    assert by_scope["repoint/good"] == [("OK", "reachable; what it reads is there")]
    [(status, detail)] = by_scope["repoint/keyless"]
    assert status == "FAIL" and "has no DATABASE_URL to retarget" in detail, detail
    [(status, detail)] = by_scope["repoint/gone"]
    assert status == "FAIL" and "cannot read" in detail and "gone.env" in detail, detail
    [(status, detail)] = by_scope["repoint/secret"]
    assert status == "FAIL" and "secret/db does not exist in namespace shop" in detail, detail
    # Reading only: nothing was changed to find this.
    assert env_ok.read_text() == "DATABASE_URL=postgresql://app@old-host:5432/app\n"
    human = cutover("check", "-p", str(plan))
    assert "NOT READY: 6 blockers" in human.stdout, human.stdout


def test_a_move_that_would_take_the_applications_last_connections_is_a_blocker(
    tmp_path: Path, cutover: Callable[..., Result]
) -> None:
    """A source of 20 connections, 3 kept for superusers: while the application holds 13,
    a move of 3 databases (7 sessions: two a database in the switch, and the maintenance
    database) does not fit in the 4 left; with 3 fewer it fits, leaving none (a warning);
    the check never takes a slot the application then misses."""
    own = Lab(tmp_path / "lab")
    own.up(sample=False)
    try:
        with connect(own.server("source")) as conn:
            conn.execute("ALTER SYSTEM SET max_connections = 20")
            conn.execute("CREATE ROLE storefront LOGIN PASSWORD 'storefront'")
        own.restart("source")
        names = [f"tenant_{i}" for i in range(3)]
        for db in names:
            with connect(own.server("source")) as conn:
                conn.execute(f"CREATE DATABASE {db}")
        plan = tmp_path / "plan.yaml"
        plan.write_text(dump(own.plan(names, move="tight")))
        source = own.server("source")

        def application() -> psycopg.Connection[Any]:
            return psycopg.connect(
                host=source.host,
                port=source.port,
                user="storefront",
                password="storefront",
                dbname="postgres",
                application_name="storefront",
            )

        sessions = [application() for _ in range(13)]
        refused = cutover("check", "-p", str(plan), "--json")
        assert refused.code == 1, refused.stdout + refused.stderr
        assert findings(refused)[("source", "connections", "FAIL")]["detail"] == (
            "max_connections = 20, 3 reserved for superusers, 13 in use by others: the move "
            "holds up to 7 (3 database(s), two sessions each in the switch; the maintenance "
            "database; 2 copy jobs in start), 4 are free: the application would be refused "
            "connections"
        )
        assert ("target", "connections", "OK") in findings(refused)
        sessions.append(application())  # the check's sessions are gone: the slot is there
        for session in sessions[-4:]:
            session.close()
        tight = findings(cutover("check", "-p", str(plan), "--json"))
        assert tight[("source", "connections", "WARN")]["detail"].endswith(
            "; 0 would stay free for the application (less than 5)"
        )
        for session in sessions[:-4]:
            assert session.execute("SELECT 1").fetchone() == (1,)
            session.close()
    finally:
        own.down(purge=True)
