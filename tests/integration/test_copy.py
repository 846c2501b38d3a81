"""The initial copy: one snapshot, several jobs, large tables split, nothing lost or doubled."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from cutover.lab import Lab
from cutover.pg import copy, schema
from cutover.pg.connect import connect as cutover_connect
from cutover.types import SyncProgress
from tests.conftest import REPO, Databases, Result, connect

pytestmark = pytest.mark.integration

# Types whose binary form differs between servers (enum arrays, composites), a
# generated column, a dropped column, TOASTed values, NULLs and awkward text.
AWKWARD = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE pair AS (a int, b text);
CREATE TABLE "Big ""one"" t" (
    id bigint PRIMARY KEY,
    moods mood[],
    p pair,
    gone int,
    note text,
    doubled bigint GENERATED ALWAYS AS (id * 2) STORED
);
ALTER TABLE "Big ""one"" t" DROP COLUMN gone;
INSERT INTO "Big ""one"" t" (id, moods, p, note)
SELECT g, ARRAY['ok', 'happy']::mood[], ROW(g::int, E'tab\\there')::pair,
       CASE WHEN g % 1000 = 0 THEN repeat('x', 5000) WHEN g % 7 = 0 THEN NULL
            ELSE E'line\\nbreak \\\\ ' || g END
FROM generate_series(1, 60000) g;
CREATE TABLE typed (
    id int PRIMARY KEY, i2 smallint, i8 bigint, n numeric, f float8, b bytea, j jsonb,
    ts timestamptz, d date, iv interval, u uuid, ints int[], texts text[], ip inet, ok bool
);
INSERT INTO typed
SELECT g, g::smallint, g * 10000000000, g / 7.0, CASE WHEN g = 1 THEN 'NaN' ELSE g / 3.0 END,
       decode(md5(g::text), 'hex'), jsonb_build_object('g', g, 'a', ARRAY[g, NULL]),
       '2026-01-01'::timestamptz + g * interval '1 minute', '2026-01-01'::date + g,
       g * interval '1 second', md5(g::text)::uuid, ARRAY[g, NULL, -g], ARRAY['a', NULL, 'q"x'],
       '10.0.0.1'::inet, g % 2 = 0
FROM generate_series(1, 3000) g;
INSERT INTO typed (id) VALUES (0);
CREATE TABLE small (id int PRIMARY KEY, v text);
INSERT INTO small SELECT g, 'v' || g FROM generate_series(1, 10) g;
CREATE TABLE empty (id int PRIMARY KEY);
"""
DIGEST = "SELECT md5(string_agg(t::text, '|' ORDER BY t.id)) AS d, count(*) AS n FROM {} t"
TABLES = ['"Big ""one"" t"', "typed", "small", "empty"]


def digests(lab: Lab, side: str, db: str) -> dict[str, object]:
    with connect(lab.server(side), db) as conn:
        return {t: conn.execute(DIGEST.format(t)).fetchone() for t in TABLES}


def test_a_split_table_arrives_exactly_as_the_snapshot_saw_it(
    lab: Lab, databases: Databases, tmp_path: Path
) -> None:
    db = databases.create()
    with connect(lab.server("source"), db) as conn:
        conn.execute(AWKWARD)
    with connect(lab.server("target")) as conn:
        conn.execute(f'CREATE DATABASE "{db.replace(chr(34), chr(34) * 2)}"')
    archive = tmp_path / "schema.dump"
    schema.dump(lab.server("source"), db, archive)
    schema.restore_pre_data(lab.server("target"), db, archive)
    expected = digests(lab, "source", db)

    source = cutover_connect(lab.server("source"), db, label="source")
    tables = [
        ("public", 'Big "one" t'),
        ("public", "typed"),
        ("public", "small"),
        ("public", "empty"),
    ]
    parts = copy.plan_parts(source, tables, jobs=3, binary=True, split_bytes=1 << 20)
    assert [p.pages is not None for p in parts].count(True) == 3  # the big table, in 3 parts
    # Built-in types only travel in binary; a table with an enum array or a composite, as text.
    assert {p.table.name: p.binary for p in parts} == {
        'Big "one" t': False,
        "typed": True,
        "small": True,
        "empty": True,
    }
    slot = f"copytest_{uuid.uuid4().hex[:8]}"
    seen: list[SyncProgress] = []
    try:
        with copy.exported_snapshot(lab.server("source"), db, slot) as snapshot:
            # Written after the snapshot: the slot streams these, the copy must not carry them.
            source.execute('INSERT INTO "Big ""one"" t" (id) VALUES (-1)')
            source.execute("DELETE FROM small WHERE id = 1")
            copier = copy.Copier(
                lab.server("source"), lab.server("target"), db, snapshot=snapshot, freeze=set()
            )
            copier.run(parts, jobs=3, deadline=time.monotonic() + 60, on_progress=seen.append)
    finally:
        source.execute("SELECT pg_drop_replication_slot(%s)", (slot,))
        source.close()
    assert digests(lab, "target", db) == expected
    assert seen[-1].done and seen[-1].bytes_done == seen[-1].bytes_total
    assert len(seen[-1].tables) == 4 and set(seen[-1].tables.values()) == {"copied"}


def test_rows_already_on_the_target_stop_start_and_stay(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    db = databases.create()
    with connect(lab.server("source"), db) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
    move = f"t{uuid.uuid4().hex[:8]}"
    plan = str(write_plan([db], move=move))
    assert cutover("prepare", "-p", plan).code == 0
    with connect(lab.server("target"), db) as conn:
        conn.execute("INSERT INTO t VALUES (42)")
    result = cutover("start", "-p", plan, "--wait")
    assert result.code == 1
    assert "tables of " in result.stderr and 'on the target already hold rows: "public"."t"' in (
        result.stderr.replace("\n", " ")
    )
    assert "hint: the initial copy fills empty tables" in result.stderr
    with connect(lab.server("target"), db) as conn:
        assert conn.execute("SELECT array_agg(id) AS ids FROM t").fetchone() == {"ids": [42]}
    assert move_slots(lab, move) == 0  # refused before the slot: no WAL pinned


def test_start_says_which_open_transaction_its_slot_waits_for(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    """A transaction left open on the source holds the slot's creation: start names it."""
    db = databases.create()
    with connect(lab.server("source"), db) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    plan = str(write_plan([db]))
    assert cutover("prepare", "-p", plan).code == 0
    holder = connect(lab.server("source"), db)
    holder.autocommit = False
    holder.execute("INSERT INTO t VALUES (1)")  # a transaction id, then idle in transaction
    started = subprocess.Popen(
        [sys.executable, "-m", "cutover", "start", "-p", plan, "--wait"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, "COLUMNS": "400"},
    )
    try:
        assert started.stderr is not None
        lines: list[str] = []
        reader = threading.Thread(target=lambda: lines.extend(started.stderr or ()), daemon=True)
        reader.start()
        deadline = time.monotonic() + 60
        while not any("creating the replication slot" in x for x in lines):
            assert time.monotonic() < deadline and started.poll() is None, "".join(lines)
            time.sleep(0.2)
        told = "".join(lines)
        assert f"pid {holder.info.backend_pid} (" in told, told
        assert "idle in transaction" in told and "pg_terminate_backend" in told
        holder.commit()
        assert started.wait(timeout=120) == 0, "".join(lines)
        reader.join(timeout=10)
    finally:
        if started.poll() is None:
            started.kill()
        holder.close()
    with connect(lab.server("target"), db) as conn:
        assert conn.execute("SELECT array_agg(id) AS ids FROM t").fetchone() == {"ids": [1]}


def big_table(lab: Lab, db: str, rows: int) -> None:
    """`big`: `rows` rows of about 200 bytes on the source, long enough to catch its copy."""
    with connect(lab.server("source"), db) as conn:
        conn.execute(
            "CREATE TABLE big (id bigint PRIMARY KEY, pad text);"
            f"INSERT INTO big SELECT g, repeat('p', 200) FROM generate_series(1, {rows}) g"
        )


def move_slots(lab: Lab, move: str) -> int:
    """How many replication slots of the move the source has."""
    with connect(lab.server("source")) as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM pg_replication_slots WHERE slot_name LIKE %s",
            (f"cutover_{move}%",),
        ).fetchone()
    assert row is not None
    return int(row["n"])


def _copying(lab: Lab, db: str) -> bool:
    with connect(lab.server("target"), db) as conn:
        row = conn.execute(
            "SELECT count(*) AS n FROM pg_stat_progress_copy "
            "WHERE datname = current_database() AND bytes_processed > 0"
        ).fetchone()
    return bool(row and row["n"])


def test_start_killed_in_the_middle_of_the_copy_copies_again_exactly(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    db = databases.create()
    big_table(lab, db, 600_000)
    with connect(lab.server("source"), db) as conn:
        conn.execute("CREATE TABLE small (id int PRIMARY KEY); INSERT INTO small VALUES (1), (2)")
    move = f"t{uuid.uuid4().hex[:8]}"
    plan = str(write_plan([db], move=move))
    assert cutover("prepare", "-p", plan).code == 0
    child = subprocess.Popen(
        [sys.executable, "-m", "cutover", "start", "-p", plan, "--wait", "--parallel", "1"],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while not _copying(lab, db):
        assert child.poll() is None, "start ended before it was killed"
        assert time.monotonic() < deadline
        time.sleep(0.05)
    os.kill(child.pid, signal.SIGKILL)
    child.wait()

    status = json.loads(cutover("status", "-p", plan, "--json").stdout)
    assert status["interrupted"] == [f"{db}/start.copy_data"]
    again = cutover("start", "-p", plan, "--wait")
    assert again.code == 0, again.stdout + again.stderr
    with connect(lab.server("source"), db) as conn:
        conn.execute("INSERT INTO big VALUES (0, 'after')")  # streamed, not copied
    assert move_slots(lab, move) == 1
    deadline = time.monotonic() + 20
    while True:
        with connect(lab.server("target"), db) as conn:
            big = conn.execute("SELECT count(*) AS n, count(DISTINCT id) AS d FROM big").fetchone()
        if big == {"n": 600001, "d": 600001} or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert big == {"n": 600001, "d": 600001}


def test_start_runs_in_the_background_and_status_follows_it(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    db = databases.create()
    big_table(lab, db, 1_000_000)
    plan = write_plan([db], move=f"t{uuid.uuid4().hex[:8]}")
    assert cutover("prepare", "-p", str(plan)).code == 0
    started = time.monotonic()
    result = cutover("start", "-p", str(plan))
    assert result.code == 0, result.stderr
    assert time.monotonic() - started < 10
    assert "started in the background (pid" in result.stdout
    log = next((plan.parent / "state").glob("*.start.log"))
    deadline = time.monotonic() + 90
    while True:
        status = json.loads(cutover("status", "-p", str(plan), "--json").stdout)
        if status["databases"][db]["replicating"] or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert status["databases"][db]["replicating"] is True, log.read_text()
    while "wait_for_catchup" not in log.read_text() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert f"applied {db}/start.copy_data" in log.read_text()
