"""The contract every replication engine passes, on real servers, before anything else.

Driven through the Engine Protocol alone (cutover.engines.base), the way the
phases drive it: copy, stream, lag that rises while the target is held and
falls when it is let go, the barrier, promote, fallback the other way, and a
cleanup that leaves nothing of the move on either server. A new engine is added
to ENGINES (tests/integration/conftest.py) and passes this first.
"""

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from cutover import database
from cutover.database import Pool
from cutover.engines import engine_for, prove_applied, reversed_plan
from cutover.engines.base import Engine
from cutover.lab import Lab
from cutover.pg import pglogical
from cutover.plan import Plan
from cutover.plan import load as load_plan
from cutover.types import Side, SyncProgress, TableState
from tests.conftest import Databases, Result, connect
from tests.integration.conftest import ENGINES, dms_section, replication_objects

pytestmark = pytest.mark.integration

SCHEMA = '''
CREATE TABLE items (id bigserial PRIMARY KEY, note text);
CREATE TABLE "Odd ""Name""" (k text PRIMARY KEY, v int);
INSERT INTO items (note) SELECT 'n' || g FROM generate_series(1, 5000) g;
INSERT INTO "Odd ""Name""" SELECT 'k' || g, g FROM generate_series(1, 100) g;
'''


@dataclass
class Move:
    lab: Lab
    db: str
    plan: Plan
    plan_path: Path
    servers: Pool
    engine: Engine

    def rows(self, side: str, table: str = "items") -> int:
        with connect(self.lab.server(side), self.db) as conn:
            row = conn.execute(f"SELECT count(*) AS n FROM {table}").fetchone()
        assert row is not None
        return int(row["n"])

    def write(self, side: str, rows: int) -> None:
        with connect(self.lab.server(side), self.db) as conn:
            conn.execute("INSERT INTO items (note) SELECT 'w' FROM generate_series(1, %s)", (rows,))


def eventually(probe: Callable[[], bool], *, seconds: float = 30.0, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not probe():
        assert time.monotonic() < deadline, f"not within {seconds:g} s: {what}"
        time.sleep(0.1)


@pytest.fixture(params=[*ENGINES, "dms"])
def engine(request: pytest.FixtureRequest) -> str:
    """Each replication engine in turn; dms through the lab-backed stand-in of Google's APIs."""
    return str(request.param)


@pytest.fixture
def move(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    engine: str,
    tmp_path: Path,
) -> Iterator[Move]:
    """A database prepared for a move by the engine under test; nothing copied yet."""
    db = databases.create()
    with connect(lab.server("source"), db) as conn:
        conn.execute(SCHEMA)
    with ExitStack() as stack:
        extra = {"dms": dms_section(stack, lab, tmp_path)} if engine == "dms" else {}
        path = write_plan([db], move=f"c{uuid.uuid4().hex[:8]}", engine=engine, **extra)
        prepared = cutover("prepare", "-p", str(path))
        assert prepared.code == 0, prepared.stdout + prepared.stderr
        plan = load_plan(path)
        with database.pool({"source": plan.source, "target": plan.target}) as servers:
            yield Move(lab, db, plan, path, servers, engine_for(plan, servers))


def test_an_engine_copies_streams_lags_proves_promotes_falls_back_and_leaves_nothing(
    move: Move, cutover: Callable[..., Result]
) -> None:
    engine, db, servers, plan = move.engine, move.db, move.servers, move.plan
    assert engine.kind == plan.engine.value
    # prepare asked the engine for what it needs on the source
    assert engine.installed(db) and engine.access_granted(db) and engine.source_prepared(db)
    assert not engine.initial_sync_started(db)
    assert engine.lag(db) is None  # the source keeps nothing for the target yet

    # -- copy, the way the start phase orders it
    if engine.traits.keys_before_copy:
        database.restore_post_data(plan, servers, db, jobs=2, dry_run=False)
    seen: list[SyncProgress] = []
    engine.initial_sync(
        db, jobs=2, deadline=time.monotonic() + 120, on_progress=seen.append, dry_run=False
    )
    assert engine.initial_sync_started(db)
    assert seen and all(isinstance(s, SyncProgress) for s in seen)
    if not engine.traits.keys_before_copy and not engine.traits.copies_schema:
        database.restore_post_data(plan, servers, db, jobs=2, dry_run=False)

    # -- stream
    if not engine.streaming(db):
        engine.stream(db, dry_run=False)
    assert engine.streaming(db)
    eventually(lambda: engine.progress(db).done, what="every table ready")
    progress = engine.progress(db)
    assert set(progress.tables.values()) <= {TableState.READY, TableState.COPIED}
    assert progress.bytes_done == progress.bytes_total > 0
    move.write("source", 100)
    prove_applied(engine, [db], timeout=30, hint="")
    assert move.rows("target") == move.rows("source") == 5100
    assert move.rows("target", '"Odd ""Name"""') == 100
    lag = engine.lag(db)
    assert lag is not None and lag.connected and not lag.lost
    assert lag.measured_at == pytest.approx(time.time(), abs=5)

    # -- lag rises while the target is held, and falls when it is let go
    before = lag.bytes
    with connect(move.lab.server("target"), db) as holder:
        holder.execute("BEGIN READ WRITE")  # a target read-only until promote takes locks too
        holder.execute("LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        move.write("source", 20_000)
        marker = engine.write_barrier(db, uuid.uuid4().hex)

        def behind() -> bool:
            engine.heartbeat(db)
            now = engine.lag(db)
            return now is not None and now.bytes > before + 500_000

        eventually(behind, what="the lag rises above 500 kB while the target is held")
        assert not engine.barrier_reached(db, marker)
        holder.execute("ROLLBACK")
    eventually(lambda: engine.barrier_reached(db, marker), what="the held barrier arrives")

    def caught_up() -> bool:
        engine.heartbeat(db)
        now = engine.lag(db)
        return now is not None and now.bytes <= plan.thresholds.max_switch_lag

    eventually(caught_up, what="the lag falls under max_switch_lag")
    assert move.rows("target") == move.rows("source")
    assert engine.apply_errors(db) == 0

    # -- promote
    if not engine.ready_to_switch(db):
        engine.prepare_switch(db, dry_run=False)
    assert engine.ready_to_switch(db)
    prove_applied(engine, [db], timeout=30, hint="")
    assert not engine.promoted(db)
    # The switch's copy_sequences: before the promotion, or right after it where the
    # target takes no write before.
    copies_sequences = not engine.traits.sets_sequences_at_promote
    read_only = engine.traits.target_read_only_until_promote
    if copies_sequences and not read_only:
        database.copy_sequences(servers, db, dry_run=False)
    target = servers.get("target", db)
    if engine.kind == "pglogical":  # promote waits for this worker to be gone, not a second
        assert pglogical.apply_worker_running(target, f"cutover_{move.plan.move}")
    began = time.monotonic()
    engine.promote(db, dry_run=False)
    # No wait of a second for pglogical's worker (dms: Google's promotion, polled).
    assert time.monotonic() - began < (0.5 if engine.kind != "dms" else 15)
    if copies_sequences and read_only:
        database.copy_sequences(servers, db, dry_run=False)
    if engine.kind == "pglogical":
        assert not pglogical.apply_worker_running(target, f"cutover_{move.plan.move}")
    assert engine.promoted(db)
    move.write("source", 7)  # no longer carried, though the subscription may remain
    time.sleep(1.0)
    assert move.rows("target") == move.rows("source") - 7

    # -- fallback: the engine of the reversed move replicates back without a copy, started
    # (as the switch does) before the ended subscription and its slot are removed
    with connect(move.lab.server("source"), db) as conn:
        conn.execute("DELETE FROM items WHERE note = 'w' AND id > (SELECT max(id) - 7 FROM items)")
    assert move.rows("target") == move.rows("source")
    back_plan = reversed_plan(plan)
    with database.pool({"source": back_plan.source, "target": back_plan.target}) as back_servers:
        back = engine_for(back_plan, back_servers)
        assert not back.fallback_running(db)
        if engine.kind != "dms":  # DMS replicates one way: switch refuses --keep-fallback
            back.start_fallback(db, dry_run=False)
            assert back.fallback_running(db)

        engine.stop(db, dry_run=False)
        engine.release_source(db, dry_run=False)
        assert engine.promoted(db) and engine.stopped(db) and engine.source_released(db)
        assert engine.lag(db) is None

        def connected() -> bool:
            back_lag = back.lag(db)
            return back_lag is not None and back_lag.connected

        if engine.kind != "dms":
            eventually(connected, what="the fallback connects")
            move.write("target", 3)
            prove_applied(back, [db], timeout=30, hint="")
            assert move.rows("source") == move.rows("target")
            back.promote(db, dry_run=False)
            assert back.promoted(db)

    # -- cleanup leaves nothing of the move on either server
    cleaned = cutover("cleanup", "-p", str(move.plan_path), "--yes")
    assert cleaned.code == 0, cleaned.stdout + cleaned.stderr
    assert replication_objects(move.lab, db) == {
        "slots": 0,
        "subscriptions": 0,
        "publications": 0,
        "extensions": 0,
    }
    for side in ("source", "target"):
        with connect(move.lab.server(side)) as conn:
            roles = conn.execute(
                "SELECT rolname FROM pg_roles WHERE rolname LIKE %s", (f"cutover_{plan.move}%",)
            ).fetchall()
        assert roles == [], side
        assert not database.barrier_schema_exists(servers, Side(side), db)
    assert engine.access_revoked() and engine.uninstalled(db)
