"""The pglogical engine on real servers with the real extension."""

import json
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from cutover.lab import Lab
from cutover.pg import pglogical
from tests.conftest import Databases, Result, connect

pytestmark = pytest.mark.integration

LOG = '"Log ""x"""'  # a table without a key, its name quoted
SCHEMA = f"""
CREATE TABLE items (id bigserial PRIMARY KEY, name text, price numeric);
CREATE INDEX items_by_name ON items (name);
INSERT INTO items (name, price) SELECT 'n' || g, g FROM generate_series(1, 20000) g;
CREATE TABLE {LOG} (line text);
INSERT INTO {LOG} SELECT 'l' || g FROM generate_series(1, 3000) g;
"""


def wait_for(check: Callable[[], bool], seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_pglogical_move_keys_copies_streams_and_leaves_nothing_behind(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    db = databases.create()
    with connect(lab.server("source"), db) as conn:
        conn.execute(SCHEMA)
    move = f"p{uuid.uuid4().hex[:8]}"
    plan = str(write_plan([db], move=move, engine="pglogical"))

    # A table without a key is a blocker for pglogical, with the command that fixes it.
    checked = cutover("check", "-p", plan, "--json")
    assert checked.code == 1
    blocker = next(
        f
        for f in json.loads(checked.stdout)["findings"]
        if f["check"] == "replica_identity" and f["status"] == "FAIL"
    )
    assert "pglogical cannot carry" in blocker["detail"]
    assert f'"public".{LOG}' in blocker["detail"]
    assert blocker["fix"] == ["cutover backfill -p <plan>"]

    assert cutover("prepare", "-p", plan).code == 0  # numbers the keyless table first
    started = cutover("start", "-p", plan, "--wait")
    assert started.code == 0, started.stdout + started.stderr
    # The keys came before pglogical's copy: changes are applied by key from its first one.
    assert started.stdout.index("start.restore_post_data") < started.stdout.index("start.copy_data")

    with connect(lab.server("source"), db) as source, connect(lab.server("target"), db) as target:
        for conn in (source, target):
            row = conn.execute(f"SELECT count(*) AS n FROM {LOG}").fetchone()
            assert row == {"n": 3000}
        source.execute("UPDATE items SET price = -1 WHERE id <= 10")
        source.execute("DELETE FROM items WHERE id > 19990")
        source.execute(f"UPDATE {LOG} SET line = 'changed' WHERE line = 'l7'")

        def applied() -> bool:
            row = target.execute(
                "SELECT count(*) AS n, count(*) FILTER (WHERE price = -1) AS changed FROM items"
            ).fetchone()
            log = target.execute(f"SELECT 1 FROM {LOG} WHERE line = 'changed'")
            return row == {"n": 19990, "changed": 10} and log.fetchone() is not None

        wait_for(applied)
        # The slot is where cutover computes pglogical puts it, hostile database name and all.
        actual = target.execute("SELECT sub_slot_name AS s FROM pglogical.subscription").fetchone()
        computed = pglogical.slot_name(source, db, f"cutover_{move}_source", f"cutover_{move}")  # type: ignore[arg-type]
        assert actual == {"s": computed}

    status = cutover("status", "-p", plan, "--json")
    info = json.loads(status.stdout)["databases"][db]
    assert info["engine"] == "pglogical subscription replicating, initial copy ready"
    assert set(info["table_states"].values()) == {"ready"}
    assert info["slot"]["active"] is True
    assert "password" not in status.stdout

    done = cutover("cleanup", "-p", plan, "--yes")
    assert done.code == 0, done.stdout + done.stderr
    for side in ("source", "target"):
        with connect(lab.server(side), db) as conn:
            left = conn.execute(
                "SELECT (SELECT count(*) FROM pg_extension WHERE extname = 'pglogical') AS ext,"
                " (SELECT count(*) FROM pg_replication_slots WHERE database = current_database())"
                " AS slots,"
                " (SELECT count(*) FROM pg_roles WHERE rolname LIKE %s) AS roles,"
                " (SELECT count(*) FROM pg_attribute WHERE attname = 'cutover_id'"
                " AND NOT attisdropped) AS keys",
                (f"cutover_{move}%",),
            ).fetchone()
            assert left == {"ext": 0, "slots": 0, "roles": 0, "keys": 0}, side
