"""`cutover lab`: servers that start, survive a restart, and are thrown away."""

import os
import pwd
from collections.abc import Callable
from pathlib import Path

import pytest

from cutover.lab import Lab
from cutover.plan import load
from tests.conftest import Result, connect

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
    assert "READY: 0 blockers, 2 warnings" in check.stdout

    lab = Lab(root)
    with connect(lab.server("source"), "app") as conn:
        orders = conn.execute("SELECT count(*) AS n FROM orders").fetchone()
        settings = conn.execute(
            "SELECT current_setting('wal_level') AS wal, "
            "current_setting('shared_preload_libraries') AS preload"
        ).fetchone()
        server_pid = conn.execute("SELECT pg_backend_pid() AS pid").fetchone()
    assert orders is not None and orders["n"] == 10000
    assert settings is not None and settings["wal"] == "logical"
    state = lab.state()
    assert state is not None
    if state.pglogical:
        assert settings["preload"] == "pglogical"
    if os.geteuid() == 0:  # PostgreSQL refuses root: the servers run as postgres
        assert server_pid is not None
        uid = os.stat(f"/proc/{server_pid['pid']}").st_uid
        assert pwd.getpwuid(uid).pw_name == "postgres"

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
