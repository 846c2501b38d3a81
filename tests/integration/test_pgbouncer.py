"""A real PgBouncer in front of the lab: paused, repointed and resumed without a failed query."""

import json
import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import yaml

from cutover.errors import PreconditionFailed
from cutover.lab import Lab
from cutover.load import read_dsn
from cutover.pg.pgbouncer import PoolDatabase, shown
from cutover.plan import PgBouncer, PgBouncerRepoint, PgBouncerWriter, Server
from cutover.plan import load as load_plan
from cutover.pooler import Bouncer
from cutover.repoint.pgbouncer import PgBouncerRepoint as Repoint
from cutover.runner import FAILPOINT
from cutover.steps import SwitchStep as S
from cutover.writers.pgbouncer import PgBouncerWriter as Writer
from tests import pgbouncer
from tests.conftest import Databases, Result, connect
from tests.integration.conftest import (
    KEEP_FALLBACK_WALK,
    Running,
    acked_on,
    audit_on_source,
    can_login,
    ledger_of,
    nothing_lost,
)

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("pgbouncer") is None, reason="no pgbouncer here"),
]

APP_PASSWORD = "app-secret-2"


@dataclass
class Pool:
    """The test's PgBouncer, and its database."""

    bouncer: Bouncer
    db: str

    @property
    def config(self) -> Path:
        return self.bouncer.config

    @property
    def port(self) -> int:
        return self.bouncer.port

    def spec(self) -> PgBouncer:
        return self.bouncer.spec()

    def client(self, application: str = "shop") -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(
            host="127.0.0.1",
            port=self.port,
            dbname="app",
            user="app",
            password=APP_PASSWORD,
            application_name=application,
            autocommit=True,
        )


@pytest.fixture
def bouncer(lab: Lab, databases: Databases) -> Iterator[Pool]:
    db = databases.create()
    with connect(lab.server("target")) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(db)))
    for side in ("source", "target"):
        with connect(lab.server(side), db) as conn:
            conn.execute("CREATE TABLE t (id serial PRIMARY KEY, note text)")
    source = lab.server("source")
    force = f"user={source.user} password={lab.password_file.read_text().strip()}"
    with pgbouncer.running(source, db, {"app": APP_PASSWORD}, force=force) as running:
        yield Pool(running, db)


def writer(b: Pool) -> Writer:
    return Writer("pool", PgBouncerWriter(pgbouncers=[b.spec()], databases=["app"]))


def test_a_paused_pool_holds_queries_and_resume_sends_them_on(bouncer: Pool) -> None:
    pool = writer(bouncer)
    with bouncer.client() as app:
        app.execute("INSERT INTO t (note) VALUES ('before')")
        pool.stop(dry_run=False)
        deadline = time.monotonic() + 5
        while not pool.is_drained():
            assert time.monotonic() < deadline
            time.sleep(0.02)
        assert pool.is_healthy() == (False, f"still paused: pgbouncer 127.0.0.1:{bouncer.port} app")

        done: list[float] = []
        held = threading.Thread(
            target=lambda: (app.execute("INSERT INTO t (note) VALUES ('held')"), done.append(1))
        )
        held.start()
        time.sleep(0.5)
        assert not done  # held in PgBouncer's queue, not failed
        pool.start(dry_run=False)
        held.join(timeout=10)
        assert done
        assert pool.is_healthy() == (True, "")
        notes = app.execute("SELECT array_agg(note ORDER BY id) FROM t").fetchone()
    assert notes == (["before", "held"],)


def test_a_pause_waits_for_a_transaction_and_names_its_client(bouncer: Pool) -> None:
    pool = writer(bouncer)
    with bouncer.client(application="billing") as app:
        app.autocommit = False
        app.execute("INSERT INTO t (note) VALUES ('in flight')")  # a transaction left open
        pool.stop(dry_run=False)
        time.sleep(0.5)
        assert not pool.is_drained()
        said = pool.draining()
        assert "user app from 127.0.0.1:" in said and "'billing'" in said, said
        app.commit()  # the transaction ends: the PAUSE is answered
        deadline = time.monotonic() + 5
        while not pool.is_drained():
            assert time.monotonic() < deadline
            time.sleep(0.02)
    pool.start(dry_run=False)
    assert pool.is_healthy() == (True, "")


def test_the_repoint_rewrites_only_host_and_port_reloads_and_reads_it_back(
    lab: Lab, bouncer: Pool
) -> None:
    source, target = lab.server("source"), lab.server("target")
    repoint = Repoint("pool", PgBouncerRepoint(pgbouncers=[bouncer.spec()], databases=["app"]))
    before = bouncer.config.read_text()
    assert repoint.points_to(source) and not repoint.points_to(target)

    dry = repoint.point_to(target, dry_run=True)
    assert bouncer.config.read_text() == before and len(dry) == 1
    assert "password" not in dry[0].action  # the entry's text is never shown

    pool = writer(bouncer)
    pool.stop(dry_run=False)
    repoint.point_to(target, dry_run=False)
    pool.start(dry_run=False)
    assert repoint.points_to(target)
    after = bouncer.config.read_text()
    changed = [
        (a, b) for a, b in zip(before.splitlines(), after.splitlines(), strict=True) if a != b
    ]
    assert len(changed) == 1
    assert f"port={target.port}" in changed[0][1] and "password=" in changed[0][1]
    with bouncer.client() as app:
        port = app.execute("SELECT inet_server_port()").fetchone()
    assert port == (target.port,)

    repoint.point_to(source, dry_run=False)  # what a rollback does
    assert bouncer.config.read_text() == before
    assert repoint.points_to(source)


def test_an_entry_missing_from_the_config_is_refused_before_anything_changes(
    bouncer: Pool, lab: Lab
) -> None:
    before = bouncer.config.read_text()
    repoint = Repoint("pool", PgBouncerRepoint(pgbouncers=[bouncer.spec()], databases=["nope"]))
    with pytest.raises(PreconditionFailed) as refused:
        repoint.point_to(lab.server("target"), dry_run=False)
    assert "has no [databases] entry nope" in refused.value.message
    assert bouncer.config.read_text() == before


@pytest.fixture
def pooler() -> str:
    """The application of `under_load` reaches its database through a PgBouncer."""
    return "pgbouncer"


# native's switch through PgBouncer ends test_the_switch_suite_through_pgbouncer_on_one_move.
@pytest.mark.parametrize("engine", ["pglogical"])
def test_a_switch_through_pgbouncer_fails_no_write_of_the_application(
    lab: Lab, under_load: Running, cutover: Callable[..., Result]
) -> None:
    """Paused, repointed and resumed: the application waits a little, and sees no error."""
    switched = cutover("switch", "-p", str(under_load.plan), "--yes")
    assert switched.code == 0, switched.stdout + switched.stderr
    outcome = nothing_lost(lab, under_load)
    assert outcome.errors == [] and outcome.fenced_errors == 0, outcome.errors[:5]
    assert acked_on(under_load, lab.server("target").port) > 0
    print(switched.stdout.splitlines()[-1])  # the write pause, with -s


def pool_of(running: Running) -> PoolDatabase:
    """The move's database as the application's PgBouncer shows it now."""
    spec = load_plan(running.plan).writers[0].pgbouncer
    assert spec is not None
    return shown(spec.pgbouncers[0])["app"]


def points_at(pool: PoolDatabase, server: Server) -> bool:
    return (pool.host, pool.port) == (server.host, server.port)


def writes_on(
    lab: Lab, running: Running, side: str, *, more_than: int = 50, seconds: float = 1.5
) -> bool:
    """Whether the application's writes land on `side` now: more than `more_than` in `seconds`."""
    port = lab.server(side).port
    before = acked_on(running, port)
    running.work.stop.wait(seconds)
    return acked_on(running, port) > before + more_than


WALK = KEEP_FALLBACK_WALK
PAUSED = WALK[WALK.index(S.STOP_WRITERS) : WALK.index(S.START_WRITERS)]
REPOINTED = WALK[WALK.index(S.REPOINT) :]


@pytest.mark.parametrize("engine", ["native"])
def test_the_switch_suite_through_pgbouncer_on_one_move(
    lab: Lab, under_load: Running, cutover: Callable[..., Result]
) -> None:
    """Through PgBouncer, on one move under load, the application failing no write:

    - a transaction that never ends outlasts drain_timeout: the switch names its
      client and rolls back, the pool resumed on the source;
    - the switch killed (SIGKILL, after a step's work, before the ledger knew it)
      at each step in turn, each run going one step further. The pool stays
      paused from the kill in stop_writers, its queries held, until a run starts
      the writers; killed in the pause, the switch is also abandoned once, which
      resumes the pool on the source;
    - one run to the end adopts what the killed ones did, then `rollback` points
      the pool back at the source, where every write is.
    """
    plan = str(under_load.plan)
    source, target = lab.server("source"), lab.server("target")
    data = yaml.safe_load(under_load.plan.read_text())
    data["thresholds"]["drain_timeout"] = "2s"
    # Each run before the promotion checks the lag again: no window to hold, eight times.
    data["thresholds"]["lag_window"] = "0s"
    under_load.plan.write_text(yaml.safe_dump(data))

    dsn = read_dsn(under_load.plan.parent / "app.env", "DATABASE_URL")
    with psycopg.connect(dsn, application_name="billing") as stuck:
        stuck.execute("INSERT INTO load_01 (v) VALUES (-1)")  # its transaction stays open
        failed = cutover("switch", "-p", plan, "--yes")
        stuck.rollback()
    assert failed.code == 1, failed.stdout + failed.stderr
    assert "all/switch.stop_writers: writers pool did not drain" in failed.stderr
    assert f"user {under_load.role} from 127.0.0.1:" in failed.stderr
    assert "'billing'" in failed.stderr
    assert "undone" in failed.stderr
    stop = ledger_of(under_load)["all/switch.stop_writers"]
    assert stop["status"] == "failed"
    assert 2.0 <= float(str(stop["seconds"])) < 3.0  # drain_timeout, not PgBouncer's waits
    pool = pool_of(under_load)
    assert not pool.paused and points_at(pool, source)

    for step in WALK:
        if step is S.COPY_SEQUENCES:  # a sequence moved in the pause: the copy has work
            with connect(source, under_load.db) as conn:  # a superuser, whom the fence spares
                conn.execute("SELECT nextval('load_ticket_seq')")
        killed = cutover(
            "switch",
            "-p",
            plan,
            "--yes",
            "--keep-fallback",
            env={FAILPOINT: f"all/switch.{step}@applied"},
        )
        assert killed.code == -9, f"{step}: {killed.stdout}{killed.stderr}"
        status = json.loads(cutover("status", "-p", plan, "--json").stdout)
        assert status["interrupted"] == [f"all/switch.{step}"]
        pool = pool_of(under_load)
        assert pool.paused == (step in PAUSED), step
        assert points_at(pool, target if step in REPOINTED else source), step
        if step is S.FENCE_SOURCE:
            # Held, with nobody to resume them (the audit shows that none failed).
            assert not writes_on(lab, under_load, "source", more_than=0, seconds=0.5)
            abandoned = cutover("switch", "-p", plan, "--abandon", "--yes")
            assert abandoned.code == 0, abandoned.stdout + abandoned.stderr
            pool = pool_of(under_load)
            assert not pool.paused and points_at(pool, source)
            assert can_login(lab, under_load.role)
            assert writes_on(lab, under_load, "source")

    finished = cutover("switch", "-p", plan, "--yes", "--keep-fallback")
    assert finished.code == 0, finished.stdout + finished.stderr
    ledger = ledger_of(under_load)
    for step in (S.COPY_SEQUENCES, S.PROMOTE, S.START_FALLBACK, S.REPOINT, S.RELEASE_SOURCE):
        assert ledger[f"all/switch.{step}"]["outcome"] == "adopted", step  # not done twice
    pool = pool_of(under_load)
    assert not pool.paused and points_at(pool, target)
    assert writes_on(lab, under_load, "target")

    rolled = cutover("rollback", "-p", plan, "--yes")
    assert rolled.code == 0, rolled.stdout + rolled.stderr
    pool = pool_of(under_load)
    assert not pool.paused and points_at(pool, source)
    assert writes_on(lab, under_load, "source")

    under_load.stop()
    outcome = audit_on_source(lab, under_load)  # the target's writes came back by the fallback
    assert outcome.acknowledged > 500
    assert outcome.missing == []
    assert outcome.errors == [] and outcome.fenced_errors == 0, outcome.errors[:5]
