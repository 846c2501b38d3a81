"""`cutover lab`: servers that start, survive a restart, and are thrown away."""

import os
import pwd
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cutover.lab import Lab
from cutover.plan import load
from tests.conftest import REPO, Result, connect

pytestmark = pytest.mark.integration


def test_the_demo_lab_from_up_to_purge(tmp_path: Path, cutover: Callable[..., Result]) -> None:
    root = tmp_path / "demo lab"
    up = cutover("lab", "up", "--dir", str(root))
    assert up.code == 0, up.stderr
    plan = load(root / "plan.yaml")
    assert plan.databases == ["app"]
    assert plan.source.password == f"file:{root.resolve()}/password"
    assert (root / "password").stat().st_mode & 0o077 == 0

    check = cutover("check", "-p", str(root / "plan.yaml"))
    assert check.code == 0, check.stdout + check.stderr
    assert "READY: 0 blockers, 3 warnings" in check.stdout

    lab = Lab(root)
    with connect(lab.server("source"), "app") as conn:
        orders = conn.execute("SELECT count(*) AS n FROM orders").fetchone()
        settings = conn.execute(
            "SELECT current_setting('wal_level') AS wal, "
            "current_setting('shared_preload_libraries') AS preload"
        ).fetchone()
        server_pid = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()
        assert server_pid is not None
        # Read while connected: the server process ends with the connection.
        server_uid = os.stat(f"/proc/{server_pid['pid']}").st_uid
    assert orders is not None and orders["n"] == 10000
    assert settings is not None and settings["wal"] == "logical"
    state = lab.state()
    assert state is not None
    if state.pglogical:
        assert settings["preload"] == "pglogical"
    if os.geteuid() == 0:  # PostgreSQL refuses root: the servers run as postgres
        assert pwd.getpwuid(server_uid).pw_name == "postgres"

    # Up again: same servers, same data, nothing loaded twice.
    ports = [i.port for i in state.instances]
    assert cutover("lab", "up", "--dir", str(root)).code == 0
    again = lab.state()
    assert again is not None and [i.port for i in again.instances] == ports

    # Down keeps the data; up brings it back.
    assert cutover("lab", "down", "--dir", str(root)).code == 0
    assert lab.running() == {"source": False, "target": False}
    stopped = cutover("lab", "status", "--dir", str(root))
    assert stopped.stdout.count("stopped") == 2
    assert cutover("lab", "up", "--dir", str(root)).code == 0
    with connect(lab.server("source"), "app") as conn:
        row = conn.execute("SELECT count(*) AS n FROM orders").fetchone()
        assert row is not None and row["n"] == 10000

    purged = cutover("lab", "down", "--dir", str(root), "--purge")
    assert purged.code == 0
    assert not root.exists()
    assert not Path(state.data_root).exists()


def test_lab_status_without_a_lab_says_how_to_start_one(
    tmp_path: Path, cutover: Callable[..., Result]
) -> None:
    result = cutover("lab", "status", "--dir", str(tmp_path / "none"))
    assert result.code == 1
    assert "cutover lab up" in result.stdout


@pytest.mark.skipif(shutil.which("pgbouncer") is None, reason="no pgbouncer here")
def test_the_managed_lab_behind_pgbouncer_moves_its_live_database_as_no_superuser(
    tmp_path: Path, cutover: Callable[..., Result]
) -> None:
    """What `make demo MANAGED=1 POOLER=pgbouncer` does: the source reached as a managed
    service's admin, the write load through the lab's PgBouncer, which the switch pauses
    and repoints."""
    root = tmp_path / "managed lab"
    up = cutover("lab", "up", "--dir", str(root), "--managed", "--pgbouncer")
    assert up.code == 0, up.stderr
    assert "source plan user: cutover_admin (no superuser)" in up.stdout
    lab = Lab(root)
    bouncer = lab.bouncer()
    assert bouncer is not None
    source, target = lab.server("source"), lab.server("target")
    assert f"pgbouncer: running on 127.0.0.1:{bouncer.port}, app -> 127.0.0.1:{source.port}" in (
        up.stdout
    )
    plan = str(root / "plan.yaml")
    the_plan = load(root / "plan.yaml")
    assert the_plan.source.user == "cutover_admin"
    assert [(w.name, w.pgbouncer is not None) for w in the_plan.writers] == [("pool", True)]
    assert [(r.name, r.pgbouncer is not None) for r in the_plan.repoint] == [("pool", True)]
    assert f"@127.0.0.1:{bouncer.port}/app" in (root / "app.env").read_text()
    pid = int(bouncer.pid_file.read_text())
    if os.geteuid() == 0:  # as the lab's servers: not as root
        assert pwd.getpwuid(os.stat(f"/proc/{pid}").st_uid).pw_name == "postgres"
    with connect(source, "app") as conn:
        row = conn.execute(
            "SELECT rolsuper, (SELECT pg_get_userbyid(relowner) FROM pg_class "
            "WHERE relname = 'orders') AS owner FROM pg_roles WHERE rolname = 'cutover_admin'"
        ).fetchone()
    assert row == {"rolsuper": False, "owner": "shop"}
    load_process = subprocess.Popen(
        [sys.executable, "-m", "cutover", "lab", "load", "--dir", str(root)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1)
        for command in (["check"], ["prepare"], ["start", "--wait"], ["switch", "--yes"]):
            result = cutover(*command, "-p", plan)
            assert result.code == 0, result.stdout + result.stderr
        status = cutover("lab", "status", "--dir", str(root))
        assert f"app -> 127.0.0.1:{target.port}" in status.stdout
        assert "paused" not in status.stdout
        time.sleep(2)
    finally:
        load_process.send_signal(signal.SIGTERM)
        load_process.wait(timeout=30)
    audited = cutover("lab", "audit", "--dir", str(root))
    assert audited.code == 0, audited.stdout
    assert "errors the application saw from the fence, during the switch: 0" in audited.stdout
    assert "other errors the application saw: 0" in audited.stdout
    assert "acknowledged writes missing on the target: 0" in audited.stdout
    assert cutover("lab", "down", "--dir", str(root), "--purge").code == 0
    # The PgBouncer stopped with the servers (a zombie its parent has not reaped is stopped).
    stat = Path(f"/proc/{pid}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[-1].split()[0] in ("Z", "X")
