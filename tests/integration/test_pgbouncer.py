"""A real PgBouncer in front of the lab: paused, repointed and resumed without a failed query."""

import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from cutover.errors import PreconditionFailed
from cutover.lab import RUN_AS, Lab, free_port
from cutover.plan import PgBouncer, PgBouncerRepoint, PgBouncerWriter, Server
from cutover.repoint.pgbouncer import PgBouncerRepoint as Repoint
from cutover.writers.pgbouncer import PgBouncerWriter as Writer
from tests.conftest import Databases, connect

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("pgbouncer") is None, reason="no pgbouncer here"),
]

ADMIN_PASSWORD = "admin-secret-1"
APP_PASSWORD = "app-secret-2"


@dataclass
class Bouncer:
    port: int
    config: Path
    db: str
    process: "subprocess.Popen[bytes]"

    def spec(self) -> PgBouncer:
        password = self.config.parent / "admin.pw"
        return PgBouncer(
            port=self.port, user="admin", password=f"file:{password}", config=self.config
        )

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


def config_text(server: Server, db: str, port: int, folder: Path, password: str) -> str:
    quoted = "'" + db.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"""; the application's pool
[databases]
; app reaches the move's database as the lab's superuser
app = host={server.host} port={server.port} dbname={quoted} user={server.user} password={password}
other = host=127.0.0.1 port=1 dbname=untouched

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = plain
auth_file = {folder}/userlist.txt
admin_users = admin
pool_mode = transaction
ignore_startup_parameters = extra_float_digits
"""


@pytest.fixture
def bouncer(lab: Lab, databases: Databases) -> Iterator[Bouncer]:
    db = databases.create()
    with connect(lab.server("source"), db) as conn:
        conn.execute("CREATE TABLE t (id serial PRIMARY KEY, note text)")
    with connect(lab.server("target")) as conn:
        conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(db)))
    with connect(lab.server("target"), db) as conn:
        conn.execute("CREATE TABLE t (id serial PRIMARY KEY, note text)")
    # PgBouncer runs as the lab's user: its files in a folder that user reaches.
    folder = Path(tempfile.mkdtemp(prefix="cutover-pgbouncer-"))
    folder.chmod(0o777)
    password = lab.password_file.read_text().strip()
    port = free_port()
    config = folder / "pgbouncer.ini"
    config.write_text(config_text(lab.server("source"), db, port, folder, password))
    (folder / "userlist.txt").write_text(f'"admin" "{ADMIN_PASSWORD}"\n"app" "{APP_PASSWORD}"\n')
    (folder / "admin.pw").write_text(ADMIN_PASSWORD + "\n")
    for path in folder.iterdir():
        path.chmod(0o666)
    as_user = ["-u", RUN_AS] if os.geteuid() == 0 else []
    process = subprocess.Popen(["pgbouncer", *as_user, str(config)])
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert time.monotonic() < deadline and process.poll() is None, "pgbouncer did not start"
            time.sleep(0.05)
    try:
        yield Bouncer(port, config, db, process)
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)


def writer(b: Bouncer) -> Writer:
    return Writer("pool", PgBouncerWriter(pgbouncers=[b.spec()], databases=["app"]))


def test_a_paused_pool_holds_queries_and_resume_sends_them_on(bouncer: Bouncer) -> None:
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


def test_a_pause_waits_for_a_transaction_and_names_its_client(bouncer: Bouncer) -> None:
    pool = writer(bouncer)
    with bouncer.client(application="billing") as app:
        app.autocommit = False
        app.execute("INSERT INTO t (note) VALUES ('in flight')")  # a transaction left open
        pool.stop(dry_run=False)
        time.sleep(0.5)
        assert not pool.is_drained()
        said = pool.busy()
        assert "user app from 127.0.0.1:" in said and "'billing'" in said, said
        app.commit()  # the transaction ends: the PAUSE is answered
        deadline = time.monotonic() + 5
        while not pool.is_drained():
            assert time.monotonic() < deadline
            time.sleep(0.02)
    pool.start(dry_run=False)
    assert pool.is_healthy() == (True, "")


def test_the_repoint_rewrites_only_host_and_port_reloads_and_reads_it_back(
    lab: Lab, bouncer: Bouncer
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
    bouncer: Bouncer, lab: Lab
) -> None:
    before = bouncer.config.read_text()
    repoint = Repoint("pool", PgBouncerRepoint(pgbouncers=[bouncer.spec()], databases=["nope"]))
    with pytest.raises(PreconditionFailed) as refused:
        repoint.point_to(lab.server("target"), dry_run=False)
    assert "has no [databases] entry nope" in refused.value.message
    assert bouncer.config.read_text() == before
