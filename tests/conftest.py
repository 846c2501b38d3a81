"""Real PostgreSQL servers for the tests, from the same code as `cutover lab`.

The lab starts once per test session, on free loopback ports (as the postgres
user when the tests run as root). Each test gets fresh databases with unique,
deliberately awkward names, dropped afterwards.
"""

import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from cutover.lab import Lab
from cutover.pg.connect import connect as cutover_connect
from cutover.plan import Server, dump

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Two running lab servers for the whole session."""
    the_lab = Lab(tmp_path_factory.mktemp("lab"))
    the_lab.up(sample=False)
    yield the_lab
    the_lab.down(purge=True)


def connect(server: Server, dbname: str = "postgres") -> psycopg.Connection[dict[str, Any]]:
    """A superuser connection for a test to build or inspect a database."""
    return cutover_connect(server, dbname, label="test")


@dataclass
class Databases:
    """Creates databases on the lab servers for one test.

    They are not dropped one by one: with pglogical preloaded on PostgreSQL 15,
    DROP DATABASE waits forever for pglogical's supervisor (pglogical issues #399
    and #418), and ending the supervisor disables pglogical until a restart.
    Names are unique, and the whole lab is deleted when the session ends.
    """

    lab: Lab

    def create(self, side: str = "source", *, prefix: str = "db") -> str:
        """A new empty database on one side; its name needs quoting."""
        name = f'{prefix} Ü "{uuid.uuid4().hex[:8]}"'
        with connect(self.lab.server(side)) as conn:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
        return name


@pytest.fixture
def databases(lab: Lab) -> Databases:
    """Fresh databases for one test."""
    return Databases(lab)


@pytest.fixture
def write_plan(lab: Lab, tmp_path: Path) -> Callable[..., Path]:
    """Write a plan for the lab to a file; keyword arguments replace or add top-level keys."""

    def write(databases: list[str], **changes: Any) -> Path:
        data = yaml.safe_load(dump(lab.plan(databases, move="test")))
        data["state_dir"] = str(tmp_path / "state")
        for key, value in changes.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key] = {**data[key], **value}
            else:
                data[key] = value
        path = tmp_path / "plan.yaml"
        path.write_text(yaml.safe_dump(data))
        return path

    return write


@dataclass(frozen=True)
class Result:
    """A finished cutover process."""

    code: int
    stdout: str
    stderr: str


def run_cutover(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
    """Run the real command line in a child process, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "cutover", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, "COLUMNS": "200", **(env or {})},
        cwd=REPO,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cutover() -> Callable[..., Result]:
    """The command line, as a fixture."""
    return run_cutover
