"""A real PgBouncer in front of the lab: paused, repointed and resumed without a failed query."""

import shutil
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from cutover.errors import PreconditionFailed
from cutover.lab import Lab
from cutover.plan import PgBouncer, PgBouncerRepoint, PgBouncerWriter
from cutover.repoint.pgbouncer import PgBouncerRepoint as Repoint
from cutover.writers.pgbouncer import PgBouncerWriter as Writer
from tests import pgbouncer
from tests.conftest import Databases, Result, connect
from tests.integration.conftest import Running, acked_on, nothing_lost
from tests.pgbouncer import Bouncer

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
