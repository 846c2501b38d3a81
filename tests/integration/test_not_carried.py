"""What logical replication does not carry, on real servers: found by check, then handled.

Large objects are counted and sized by `check` and copied by the switch while
the source is fenced; unlogged tables are copied once by start; foreign tables
and materialized views are named with what the target needs.
"""

import hashlib
import json
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cutover.lab import Lab
from cutover.pg import large_objects
from cutover.pg.connect import pool
from tests.conftest import Databases, Result, connect

pytestmark = pytest.mark.integration

BIG = 3 * 1024 * 1024 + 12345  # a few MB: copied in chunks, never whole
BIG_OID, SMALL_OID, GONE_OID, CHANGED_OID, NEW_OID, TARGET_ONLY_OID, AFTER_SWITCH_OID = (
    424240,
    424241,
    424242,
    424243,
    424244,
    424245,
    424246,
)


def findings(result: Result) -> dict[tuple[str, str], dict[str, Any]]:
    """The source database's findings by (check, status)."""
    report = json.loads(result.stdout)
    return {
        (f["check"], f["status"]): f for f in report["findings"] if f["scope"].startswith("source/")
    }


def roles(lab: Lab) -> tuple[str, str]:
    """An owner and a reader of large objects, on both servers (roles are server-wide)."""
    tag = uuid.uuid4().hex[:6]
    owner, reader = f"Lo Owner {tag}", f"lo_reader_{tag}"
    for side in ("source", "target"):
        with connect(lab.server(side)) as conn:
            conn.execute(f'CREATE ROLE "{owner}"; CREATE ROLE {reader}')
    return owner, reader


def test_check_names_what_is_not_carried_and_how_it_is_handled(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    db = databases.create()
    owner, _ = roles(lab)
    port = lab.server("source").port
    with connect(lab.server("source"), db) as conn:
        conn.execute(
            f"""
            CREATE UNLOGGED TABLE "Sessions" (id int PRIMARY KEY, v text);
            CREATE EXTENSION postgres_fdw;
            CREATE SERVER "Remote Srv" FOREIGN DATA WRAPPER postgres_fdw
                OPTIONS (host '127.0.0.1', port '{port}', dbname 'postgres');
            CREATE USER MAPPING FOR CURRENT_USER SERVER "Remote Srv" OPTIONS (user 'postgres');
            CREATE FOREIGN TABLE "far away" (id int) SERVER "Remote Srv";
            CREATE TABLE t (id int PRIMARY KEY);
            CREATE MATERIALIZED VIEW filled AS SELECT id FROM t;
            CREATE UNIQUE INDEX ON filled (id);
            CREATE MATERIALIZED VIEW "never filled" AS SELECT id FROM t WITH NO DATA;
            """
        )
        conn.execute("SELECT lo_from_bytea(0, %s)", (b"x" * 1000,))
        conn.execute("SELECT lo_from_bytea(0, %s)", (b"y" * 2000,))
        conn.execute(f"SELECT lo_from_bytea({SMALL_OID}, 'z')")
        conn.execute(f'ALTER LARGE OBJECT {SMALL_OID} OWNER TO "{owner}"')

    refused = cutover("check", "-p", str(write_plan([db])), "--json")
    assert refused.code == 1, refused.stderr
    found = findings(refused)
    blocker = found[("large_objects", "FAIL")]
    assert blocker["detail"] == "3 large objects (2.9 kB): logical replication does not carry them"
    assert "set `large_objects: copy` in the plan" in blocker["hint"]

    unlogged = found[("unlogged_tables", "WARN")]
    assert unlogged["detail"] == (
        "1 unlogged table, copied once at start, changes after it are not carried: "
        '"public"."Sessions"'
    )
    assert unlogged["fix"] == ['ALTER TABLE "public"."Sessions" SET LOGGED;']
    foreign = found[("foreign_tables", "WARN")]
    assert foreign["detail"] == (
        '1 foreign table: definitions move, data stays remote: server "Remote Srv" '
        '(postgres_fdw, 1 user mapping): "public"."far away"'
    )
    assert "user mappings" in foreign["hint"]
    views = found[("materialized_views", "OK")]
    assert views["detail"] == (
        '2 materialized views: "public"."filled" refreshed on the target after the copy and '
        'after the switch; "public"."never filled" left unpopulated as on the source'
    )
    assert views["fix"] == []
    assert found[("extensions", "OK")]["detail"] == "1 extension, all available on the target"

    copying = cutover("check", "-p", str(write_plan([db], large_objects="copy")), "--json")
    assert copying.code == 0, copying.stdout + copying.stderr
    handled = findings(copying)[("large_objects", "OK")]
    assert handled["detail"].startswith(
        "3 large objects (2.9 kB): copied during the write pause (large_objects: copy), about "
    )


def test_the_copy_of_large_objects_resumes_and_sets_owners_and_grants(
    lab: Lab, databases: Databases
) -> None:
    db = databases.create()
    databases_on_target = databases.create("target")
    owner, reader = roles(lab)
    payload = os.urandom(BIG)
    with connect(lab.server("source"), db) as conn:
        conn.execute("SELECT lo_from_bytea(%s, %s)", (BIG_OID, payload))
        conn.execute(f"SELECT lo_from_bytea({SMALL_OID}, 'small')")
        conn.execute(f'ALTER LARGE OBJECT {SMALL_OID} OWNER TO "{owner}"')
        conn.execute(f"GRANT SELECT ON LARGE OBJECT {SMALL_OID} TO {reader} WITH GRANT OPTION")
        conn.execute(f"GRANT UPDATE ON LARGE OBJECT {SMALL_OID} TO PUBLIC")
        conn.execute(f"SELECT lo_create({GONE_OID}); SELECT lo_put({GONE_OID}, 5000, 'sparse')")
    with connect(lab.server("target"), databases_on_target) as conn:
        # Left by an earlier, rolled-back copy: one equal, one with other bytes, one extra.
        conn.execute("SELECT lo_from_bytea(%s, %s)", (BIG_OID, payload))
        conn.execute(f"SELECT lo_from_bytea({SMALL_OID}, 'smaLL')")
        conn.execute(f"SELECT lo_from_bytea({TARGET_ONLY_OID}, 'stale')")
    plan = lab.plan([db])
    with pool({"source": plan.source, "target": plan.target}) as connections:
        source = connections.get("source", db)
        target = connections.get("target", databases_on_target)
        assert not large_objects.is_copied(source, target)
        [change] = large_objects.copy(source, target, where="t", dry_run=True)
        assert change.action == (
            "large objects: copy 2 (5011 bytes), set the owner or privileges of 0, "
            "delete 1, 1 unchanged"
        )
        [done] = large_objects.copy(source, target, where="t", dry_run=False)
        assert done.action.startswith(
            "large objects: 2 copied (5011 bytes), 0 owners or privileges set, 1 deleted, "
            "1 unchanged in "
        )
        assert large_objects.listing(target) == large_objects.listing(source)
        assert large_objects.is_copied(source, target)
        # Only the owner changed since: nothing is copied again, the owner is set.
        target.execute(f"ALTER LARGE OBJECT {BIG_OID} OWNER TO {reader}")
        [again] = large_objects.copy(source, target, where="t", dry_run=False)
        assert again.action.startswith("large objects: 0 copied (0 bytes), 1 owners or privileges")
        assert large_objects.listing(target) == large_objects.listing(source)
        acl = "SELECT lomacl::text[] AS acl FROM pg_largeobject_metadata WHERE oid = %s"
        assert (
            target.execute(acl, (SMALL_OID,)).fetchone()
            == source.execute(acl, (SMALL_OID,)).fetchone()
        )


def test_a_user_that_is_no_superuser_learns_the_count_and_the_size_on_disk(
    lab: Lab, databases: Databases, tmp_path: Path
) -> None:
    db = databases.create()
    role, password = f"lo_user_{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    with connect(lab.server("source"), db) as conn:
        conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.execute(f"SELECT lo_from_bytea({SMALL_OID}, %s)", (b"s" * 5000,))
        conn.execute(f"GRANT SELECT ON LARGE OBJECT {SMALL_OID} TO {role}")
    (tmp_path / "pw").write_text(password)
    server = lab.server("source").model_copy(
        update={"user": role, "password": f"file:{tmp_path / 'pw'}"}
    )
    with pool({"source": server}) as connections:
        conn = connections.get("source", db)
        found = large_objects.summary(conn)
        assert (found.count, found.bytes) == (1, None)  # pg_largeobject is not readable
        assert found.disk_bytes > 5000
        # The copy's sizes come from opening each object, which SELECT on it allows.
        assert large_objects.sizes(conn) == {SMALL_OID: 5000}


def digests(lab: Lab, side: str, db: str) -> dict[int, tuple[str, str]]:
    """Each large object's owner and the sha256 of its bytes, read whole by the test."""
    with connect(lab.server(side), db) as conn:
        rows = conn.execute(
            "SELECT oid::bigint AS oid, pg_get_userbyid(lomowner) AS owner, lo_get(oid) AS data "
            "FROM pg_largeobject_metadata"
        ).fetchall()
    return {r["oid"]: (r["owner"], hashlib.sha256(r["data"]).hexdigest()) for r in rows}


def test_a_move_copies_large_objects_and_refreshes_views_in_the_switch(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    db = databases.create()
    owner, reader = roles(lab)
    with connect(lab.server("source"), db) as conn:
        conn.execute(
            """
            CREATE TABLE docs (id int PRIMARY KEY, blob oid);
            CREATE UNLOGGED TABLE cache (k int PRIMARY KEY, v text);
            INSERT INTO cache SELECT g, 'v' || g FROM generate_series(1, 500) g;
            CREATE MATERIALIZED VIEW doc_count AS SELECT count(*) AS n FROM docs;
            """
        )
        conn.execute("SELECT lo_from_bytea(%s, %s)", (BIG_OID, os.urandom(BIG)))
        conn.execute(f"SELECT lo_from_bytea({SMALL_OID}, 'small')")
        conn.execute(f'ALTER LARGE OBJECT {SMALL_OID} OWNER TO "{owner}"')
        conn.execute(f"GRANT SELECT ON LARGE OBJECT {SMALL_OID} TO {reader}")
        conn.execute(f"SELECT lo_from_bytea({GONE_OID}, 'deleted after start')")
        conn.execute(f"SELECT lo_from_bytea({CHANGED_OID}, 'changed after start')")
        conn.execute(
            "SELECT lo_from_bytea(0, convert_to(g::text, 'UTF8')) FROM generate_series(1, 50) g"
        )
        conn.execute(f"INSERT INTO docs VALUES (1, {BIG_OID}), (2, {SMALL_OID})")
        conn.execute("REFRESH MATERIALIZED VIEW doc_count")  # populated on the source: 2
    plan = str(
        write_plan(
            [db],
            move=f"t{uuid.uuid4().hex[:8]}",
            large_objects="copy",
            thresholds={"lag_window": "0s"},
        )
    )
    for command in (["prepare"], ["start", "--wait"]):
        result = cutover(*command, "-p", plan)
        assert result.code == 0, result.stdout + result.stderr
    with connect(lab.server("target"), db) as conn:
        assert conn.execute("SELECT count(*) AS n FROM cache").fetchone() == {"n": 500}
        # Populated on the target after the copy, as on the source.
        assert conn.execute("SELECT n FROM doc_count").fetchone() == {"n": 2}
        conn.execute(f"SELECT lo_from_bytea({TARGET_ONLY_OID}, 'not on the source')")
    with connect(lab.server("source"), db) as conn:
        conn.execute("INSERT INTO cache VALUES (501, 'late'); DELETE FROM cache WHERE k = 1")
        conn.execute(f"SELECT lo_unlink({GONE_OID})")
        conn.execute(f"SELECT lo_put({CHANGED_OID}, 8, 'CHANGED')")
        conn.execute(f"SELECT lo_from_bytea({NEW_OID}, 'created after start')")
        conn.execute(f"INSERT INTO docs VALUES (3, {NEW_OID})")

    switched = cutover("switch", "-p", plan, "--yes", "--keep-fallback")
    assert switched.code == 0, switched.stdout + switched.stderr
    assert "all/switch.copy_large_objects" in switched.stdout
    copied = next(line for line in switched.stdout.splitlines() if "large objects:" in line)
    print(copied.strip())  # the measured figures, with -s

    source, target = digests(lab, "source", db), digests(lab, "target", db)
    assert target == source
    assert {BIG_OID, SMALL_OID, CHANGED_OID, NEW_OID} <= set(target)
    assert GONE_OID not in target and TARGET_ONLY_OID not in target
    assert target[SMALL_OID][0] == owner
    with connect(lab.server("target"), db) as conn:
        # The unlogged table holds its rows as of start: later writes were not carried.
        rows = conn.execute("SELECT min(k) AS lo, max(k) AS hi, count(*) AS n FROM cache")
        assert rows.fetchone() == {"lo": 1, "hi": 500, "n": 500}
        # Refreshed again after the switch: the row inserted after the copy counts.
        assert conn.execute("SELECT n FROM doc_count").fetchone() == {"n": 3}
        acl = conn.execute(
            "SELECT lomacl::text[] AS acl FROM pg_largeobject_metadata WHERE oid = %s",
            (SMALL_OID,),
        ).fetchone()
    assert acl == {"acl": [f'"{owner}"=rw/"{owner}"', f'{reader}=r/"{owner}"']}
    ledger = json.loads(next((Path(plan).parent / "state").glob("*.ledger.json")).read_text())
    step = ledger["steps"]["all/switch.copy_large_objects"]
    print(f"copy_large_objects step: {step}")

    # Written on the target after the switch, they go back with a rollback.
    with connect(lab.server("target"), db) as conn:
        conn.execute(f"SELECT lo_from_bytea({AFTER_SWITCH_OID}, 'written on the target')")
        conn.execute(f"SELECT lo_put({CHANGED_OID}, 0, 'TARGET')")
        conn.execute(f"SELECT lo_unlink({SMALL_OID})")
        conn.execute(f"INSERT INTO docs VALUES (4, {AFTER_SWITCH_OID})")
    rolled_back = cutover("rollback", "-p", plan, "--yes")
    assert rolled_back.code == 0, rolled_back.stdout + rolled_back.stderr
    assert "all/rollback.copy_large_objects" in rolled_back.stdout
    source, target = digests(lab, "source", db), digests(lab, "target", db)
    assert source == target
    assert AFTER_SWITCH_OID in source and SMALL_OID not in source


def test_pglogical_copies_unlogged_tables_once_after_its_own_copy(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    db = databases.create()
    with connect(lab.server("source"), db) as conn:
        conn.execute(
            """
            CREATE TABLE users (id int PRIMARY KEY);
            INSERT INTO users SELECT generate_series(1, 300);
            -- An unlogged table may point at a logged one: it is copied after pglogical's.
            CREATE UNLOGGED TABLE "Sessions" (id int PRIMARY KEY, user_id int REFERENCES users);
            INSERT INTO "Sessions" SELECT g, g FROM generate_series(1, 300) g;
            """
        )
    plan = str(write_plan([db], move=f"p{uuid.uuid4().hex[:8]}", engine="pglogical"))
    for command in (["prepare"], ["start", "--wait"]):
        result = cutover(*command, "-p", plan)
        assert result.code == 0, result.stdout + result.stderr
    with connect(lab.server("target"), db) as conn:
        row = conn.execute('SELECT count(*) AS n, sum(user_id) AS s FROM "Sessions"').fetchone()
        persistence = conn.execute(
            "SELECT relpersistence AS p FROM pg_class WHERE relname = 'Sessions'"
        ).fetchone()
    assert row == {"n": 300, "s": sum(range(1, 301))}
    assert persistence == {"p": "u"}  # unlogged on the target too, as on the source
