"""Primary keys added to tables without one while writers keep writing."""

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest

from cutover.lab import Lab
from cutover.pg import backfill
from cutover.pg.backfill import Key
from cutover.pg.connect import connect as cutover_connect
from tests.conftest import REPO, Databases, Result, connect

pytestmark = pytest.mark.integration

ROWS = 200_000
TABLE = '"Log ""lines"""'


def make_table(lab: Lab, db: str, rows: int = ROWS) -> None:
    with connect(lab.server("source"), db) as conn:
        conn.execute(
            f"CREATE TABLE {TABLE} (v bigint, note text);"
            f"INSERT INTO {TABLE} SELECT g, 'n' || g FROM generate_series(1, {rows}) g"
        )


def numbered(lab: Lab, db: str) -> dict[str, object]:
    with connect(lab.server("source"), db) as conn:
        row = conn.execute(
            f"SELECT count(*) AS rows, count(cutover_id) AS numbered, "
            f"count(DISTINCT cutover_id) AS distinct FROM {TABLE}"
        ).fetchone()
        key = conn.execute(
            "SELECT pg_get_constraintdef(oid) AS d FROM pg_constraint "
            f"WHERE conrelid = '{TABLE}'::regclass AND contype = 'p'"
        ).fetchone()
    assert row is not None
    return {**row, "key": key["d"] if key else None}


class Writers:
    """Inserts, updates and deletes on the table, timing each write."""

    def __init__(self, lab: Lab, db: str) -> None:
        self.conn = connect(lab.server("source"), db)
        self.stop = threading.Event()
        self.errors: list[str] = []
        self.longest = 0.0
        self.writes = 0
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        n = 0
        while not self.stop.is_set():
            n += 1
            statement = (
                f"INSERT INTO {TABLE} (v, note) VALUES (-{n}, 'new')",
                f"UPDATE {TABLE} SET note = 'upd' WHERE v = {n * 37 % ROWS + 1}",
                f"DELETE FROM {TABLE} WHERE v = {n * 91 % ROWS + 1}",
            )[n % 3]
            started = time.monotonic()
            try:
                self.conn.execute(statement)
            except psycopg.Error as exc:
                self.errors.append(str(exc))
            self.longest = max(self.longest, time.monotonic() - started)
            self.writes += 1

    def __enter__(self) -> "Writers":
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.stop.set()
        self.thread.join()
        self.conn.close()


def test_backfill_under_concurrent_writes_numbers_every_row_once(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    db = databases.create()
    make_table(lab, db)
    plan = write_plan([db], move=f"t{uuid.uuid4().hex[:8]}")
    with Writers(lab, db) as writers:
        time.sleep(0.2)
        result = cutover("backfill", "-p", str(plan))
        time.sleep(0.2)
    assert result.code == 0, result.stdout + result.stderr
    assert writers.errors == []
    assert writers.writes > 100
    assert writers.longest < 2.0  # thresholds.lock_timeout
    shown = numbered(lab, db)
    assert shown["rows"] == shown["numbered"] == shown["distinct"]
    assert shown["key"] == "PRIMARY KEY (cutover_id)"
    again = cutover("backfill", "-p", str(plan))
    assert again.code == 0
    assert "every table has a primary key or a replica identity" in again.stdout
    listed = cutover("backfill", "-p", str(plan), "--table", TABLE)
    assert listed.code == 0 and listed.stdout.count("skipped") == 5


def test_a_killed_backfill_resumes_without_renumbering(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    db = databases.create()
    make_table(lab, db, rows=400_000)
    plan = str(write_plan([db], move=f"t{uuid.uuid4().hex[:8]}"))
    child = subprocess.Popen(
        [sys.executable, "-m", "cutover", "backfill", "-p", plan],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    before: dict[int, int] = {}
    while not before:
        assert child.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
        with connect(lab.server("source"), db) as conn:
            column = conn.execute(
                f"SELECT 1 FROM pg_attribute WHERE attrelid = '{TABLE}'::regclass "
                "AND attname = 'cutover_id'"
            ).fetchone()
            if column:
                rows = conn.execute(
                    f"SELECT v, cutover_id FROM {TABLE} WHERE cutover_id IS NOT NULL"
                ).fetchall()
                before = {r["v"]: r["cutover_id"] for r in rows}
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    assert len(before) < 400_000  # killed halfway

    again = cutover("backfill", "-p", plan)
    assert again.code == 0, again.stdout + again.stderr
    shown = numbered(lab, db)
    assert shown["rows"] == shown["numbered"] == shown["distinct"] == 400_000
    with connect(lab.server("source"), db) as conn:
        after = {
            r["v"]: r["cutover_id"] for r in conn.execute(f"SELECT v, cutover_id FROM {TABLE}")
        }
    assert all(after[v] == n for v, n in before.items())  # nothing renumbered


def test_an_invalid_index_from_a_failed_build_is_rebuilt(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    db = databases.create()
    make_table(lab, db, rows=1000)
    plan = write_plan([db], move=f"t{uuid.uuid4().hex[:8]}")
    key = Key(("public", 'Log "lines"'), "cutover_id", "x")
    with connect(lab.server("source"), db) as conn:
        conn.execute(f"INSERT INTO {TABLE} (v) VALUES (1)")  # v is not unique now
        with pytest.raises(psycopg.errors.UniqueViolation):
            conn.execute(f'CREATE UNIQUE INDEX CONCURRENTLY "{key.index}" ON {TABLE} (v)')
    with cutover_connect(lab.server("source"), db, label="source") as conn:
        assert backfill.state(conn, key).index == "invalid"
    result = cutover("backfill", "-p", str(plan))
    assert result.code == 0, result.stdout + result.stderr
    assert numbered(lab, db)["key"] == "PRIMARY KEY (cutover_id)"


def test_drop_restores_the_table_and_never_touches_a_users_column(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    db = databases.create()
    make_table(lab, db, rows=1000)
    with connect(lab.server("source"), db) as conn:
        conn.execute("CREATE TABLE mine (cutover_id bigint, x int)")  # the user's own column
    plan = write_plan([db], move="keep", backfill={"tables": [TABLE]})
    assert cutover("backfill", "-p", str(plan)).code == 0
    with cutover_connect(lab.server("source"), db, label="source") as conn:
        ours = Key(("public", 'Log "lines"'), "cutover_id", "keep")
        assert backfill.drop(conn, ours, lock_timeout=2.0) is True
        assert (
            backfill.drop(conn, Key(("public", "mine"), "cutover_id", "keep"), lock_timeout=2.0)
            is False
        )
        columns = conn.execute(
            "SELECT attrelid::regclass::text AS t, attname FROM pg_attribute "
            f"WHERE attrelid IN ('{TABLE}'::regclass, 'mine'::regclass) AND attnum > 0 "
            "AND NOT attisdropped ORDER BY 1, attnum"
        ).fetchall()
        sequences = conn.execute(
            "SELECT count(*) AS n FROM pg_class WHERE relkind = 'S'"
        ).fetchone()
    assert [(c["t"], c["attname"]) for c in columns] == [
        (TABLE, "v"),
        (TABLE, "note"),
        ("mine", "cutover_id"),
        ("mine", "x"),
    ]
    assert sequences == {"n": 0}


def test_a_column_of_the_same_name_stops_backfill(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    db = databases.create()
    with connect(lab.server("source"), db) as conn:
        conn.execute("CREATE TABLE mine (cutover_id bigint, x int); INSERT INTO mine VALUES (1, 1)")
    plan = write_plan([db], move=f"t{uuid.uuid4().hex[:8]}")
    result = cutover("backfill", "-p", str(plan), "--table", "public.mine")
    assert result.code == 1
    assert '"public"."mine"."cutover_id" exists and is not cutover\'s' in result.stderr
    assert "backfill.column" in result.stderr


def test_a_whole_move_of_a_keyless_table_then_cleanup_leaves_it_as_it_was(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    db = databases.create()
    make_table(lab, db, rows=5000)
    with connect(lab.server("source"), db) as conn:
        conn.execute("CREATE TABLE mine (id int PRIMARY KEY, cutover_id bigint)")  # the user's
        conn.execute("INSERT INTO mine VALUES (1, 7)")
    plan = str(write_plan([db], move=f"t{uuid.uuid4().hex[:8]}", thresholds={"lag_window": "0s"}))
    for command in (["prepare"], ["start", "--wait"]):
        result = cutover(*command, "-p", plan)
        assert result.code == 0, result.stdout + result.stderr
    # With the key, updates and deletes replicate.
    with connect(lab.server("source"), db) as conn:
        conn.execute(f"UPDATE {TABLE} SET note = 'changed' WHERE v <= 100")
        conn.execute(f"DELETE FROM {TABLE} WHERE v > 4900")
        conn.execute(f"INSERT INTO {TABLE} (v) VALUES (-1)")
    result = cutover("switch", "-p", plan, "--yes")
    assert result.code == 0, result.stdout + result.stderr
    with connect(lab.server("target"), db) as conn:
        row = conn.execute(
            "SELECT count(*) AS n, count(*) FILTER (WHERE note = 'changed') AS changed "
            f"FROM {TABLE}"
        ).fetchone()
    assert row == {"n": 4901, "changed": 100}

    done = cutover("cleanup", "-p", plan, "--yes")
    assert done.code == 0, done.stdout + done.stderr
    for side in ("source", "target"):
        with connect(lab.server(side), db) as conn:
            columns = conn.execute(
                "SELECT attrelid::regclass::text AS t, attname FROM pg_attribute "
                f"WHERE attrelid IN ('{TABLE}'::regclass, 'mine'::regclass) AND attnum > 0 "
                "AND NOT attisdropped ORDER BY 1, attnum"
            ).fetchall()
            keys = conn.execute(
                f"SELECT count(*) AS n FROM pg_constraint WHERE conrelid = '{TABLE}'::regclass"
            ).fetchone()
            mine = conn.execute("SELECT cutover_id FROM mine").fetchone()
        assert [(c["t"], c["attname"]) for c in columns] == [
            (TABLE, "v"),
            (TABLE, "note"),
            ("mine", "id"),
            ("mine", "cutover_id"),
        ], side
        assert keys == {"n": 0}, side
        assert mine == {"cutover_id": 7}, side


def test_backfill_under_application_ownership_never_fails_a_write(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    """The table is the application's; others insert by grant, PUBLIC, or membership."""
    db = databases.create()
    tag = uuid.uuid4().hex[:6]
    owner, clerk, intern, stranger = (f"{r}_{tag}" for r in ("shop", "clerk", "intern", "anyone"))
    password = uuid.uuid4().hex
    with connect(lab.server("source")) as conn:
        for role in (owner, clerk, intern, stranger):
            conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
        conn.execute(f"GRANT {clerk} TO {intern}")
    with connect(lab.server("source"), db) as conn:
        conn.execute(f"GRANT CREATE, USAGE ON SCHEMA public TO {owner}")
        conn.execute(f"SET ROLE {owner}")
        conn.execute("CREATE TABLE ledger (v bigint, note text)")
        conn.execute("INSERT INTO ledger SELECT g, 'n' FROM generate_series(1, 50000) g")
        conn.execute("CREATE TABLE guestbook (v bigint)")
        conn.execute("INSERT INTO guestbook SELECT generate_series(1, 1000)")
        conn.execute(f"GRANT SELECT, INSERT, UPDATE, DELETE ON ledger TO {clerk}")
        conn.execute("GRANT INSERT ON guestbook TO PUBLIC")
    port = lab.server("source").port
    writes = {
        owner: "INSERT INTO ledger (v, note) VALUES (-1, 'owner')",
        clerk: "INSERT INTO ledger (v, note) VALUES (-2, 'clerk')",
        intern: "INSERT INTO ledger (v, note) VALUES (-3, 'intern')",
        stranger: "INSERT INTO guestbook (v) VALUES (-4)",
    }
    stop, errors, counts = threading.Event(), [], dict.fromkeys(writes, 0)

    def write(role: str) -> None:
        dsn = f"host=127.0.0.1 port={port} dbname='{db}' user={role} password={password}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            while not stop.is_set():
                try:
                    conn.execute(writes[role])
                    counts[role] += 1
                except psycopg.Error as exc:
                    errors.append(f"{role}: {exc}")
                time.sleep(0.005)

    threads = [threading.Thread(target=write, args=(role,)) for role in writes]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.3)
        plan = write_plan([db], move=f"t{uuid.uuid4().hex[:8]}")
        result = cutover("backfill", "-p", str(plan))
        time.sleep(0.3)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert result.code == 0, result.stdout + result.stderr
    assert errors == []
    assert all(n > 10 for n in counts.values()), counts
    with connect(lab.server("source"), db) as conn:
        for table in ("ledger", "guestbook"):
            row = conn.execute(
                f"SELECT count(*) AS rows, count(DISTINCT cutover_id) AS numbered FROM {table}"
            ).fetchone()
            assert row is not None and row["rows"] == row["numbered"], table
        # The final form: an identity column whose sequence is the owner's, with no grant.
        columns = conn.execute(
            "SELECT c.relname, a.attidentity, a.atthasdef, "
            "pg_get_userbyid(s.relowner) AS seq_owner, s.relacl IS NULL AS no_grants "
            "FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid "
            "JOIN pg_depend d ON d.refobjid = c.oid AND d.refobjsubid = a.attnum "
            "AND d.classid = 'pg_class'::regclass "
            "JOIN pg_class s ON s.oid = d.objid AND s.relkind = 'S' "
            "WHERE a.attname = 'cutover_id' ORDER BY 1"
        ).fetchall()
        assert [dict(c) for c in columns] == [
            {
                "relname": t,
                "attidentity": "d",
                "atthasdef": False,
                "seq_owner": owner,
                "no_grants": True,
            }
            for t in ("guestbook", "ledger")
        ]
        # Every role still inserts, and numbers go on after the backfilled ones.
        before = conn.execute("SELECT max(cutover_id) AS m FROM ledger").fetchone()
    for role, statement in writes.items():
        dsn = f"host=127.0.0.1 port={port} dbname='{db}' user={role} password={password}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(statement)
    with connect(lab.server("source"), db) as conn:
        after = conn.execute(
            "SELECT min(cutover_id) AS m FROM ledger WHERE v = -1 AND cutover_id > %s",
            (before["m"],),
        ).fetchone()
    assert after is not None and after["m"] is not None
