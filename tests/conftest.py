"""Real PostgreSQL servers for the tests, from the same code as `cutover lab`.

The lab starts once per test worker (pytest-xdist), on free loopback ports (as the postgres
user when the tests run as root). Each test gets fresh databases with unique,
deliberately awkward names; what replicates in them is stopped afterwards.
"""

import compileall
import os
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from hypothesis import HealthCheck, settings

from cutover.lab import Lab
from cutover.pg.connect import connect as cutover_connect
from cutover.plan import Server, dump
from tests.k8s.apiserver import Cluster

# Property tests check what holds, not how fast: a server test on the other core must not
# fail one by its 200 ms deadline, nor by generating its inputs slowly.
settings.register_profile("suite", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("suite")

REPO = Path(__file__).resolve().parent.parent


def pytest_configure(config: pytest.Config) -> None:
    """Compile cutover's bytecode once, before the workers start, as an installed package has it.

    Where bytecode is not written (PYTHONDONTWRITEBYTECODE is set), every `cutover`
    command, pod and write load the tests start (hundreds of processes) compiled cutover
    again: about 0.3 s of CPU each (`cutover --help`: 1.55 s, 1.25 s compiled).
    bench/initial_copy.py does the same.
    """
    if not hasattr(config, "workerinput"):  # the controller, or a run without workers
        for package in ("cutover", "tests"):
            compileall.compile_dir(REPO / package, quiet=1)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """Two running lab servers for the whole session."""
    the_lab = Lab(tmp_path_factory.mktemp("lab"))
    the_lab.up(sample=False)
    yield the_lab
    discard(the_lab)


def discard(lab: Lab) -> None:
    """Stop a test lab's servers at once and delete its folders in the background.

    Nothing of it is kept, and nothing needs to wait: deleting the hundreds of databases
    a whole run makes held each worker's last test about 20 s (21.8 s for 200 a server;
    their fast stop 0.74 s, an immediate one 0.21 s). `lab down` is tested in test_lab.
    """
    state = lab.state()
    if state is not None:
        pg_ctl = str(Path(state.bindir) / "pg_ctl")
        for instance in state.instances:
            subprocess.run(
                [pg_ctl, "stop", "-D", instance.datadir, "-m", "immediate", "-w"],
                capture_output=True,
                check=False,
                user=state.run_as,
            )
    lab.down(purge=False)  # its PgBouncer, and a server the immediate stop missed
    folders = [str(lab.root)] + ([state.data_root] if state is not None else [])
    subprocess.Popen(  # its own session: it outlives the worker, whose exit it does not hold
        ["rm", "-rf", "--", *folders],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def connect(server: Server, dbname: str = "postgres") -> psycopg.Connection[dict[str, Any]]:
    """A superuser connection for a test to build or inspect a database."""
    return cutover_connect(server, dbname, label="test")


@dataclass
class Databases:
    """Creates databases on the lab servers for one test.

    They are not dropped one by one: with pglogical preloaded on PostgreSQL 15,
    DROP DATABASE waits forever for pglogical's supervisor (pglogical issues #399
    and #418), and ending the supervisor disables pglogical until a restart.
    Names are unique, and the whole lab is deleted when the session ends. What
    replicates in them is stopped when the test ends (`stop_replication`).
    """

    lab: Lab
    names: list[str] = field(default_factory=list)

    def create(self, side: str = "source", *, prefix: str = "db") -> str:
        """A new empty database on one side; its name needs quoting."""
        name = f'{prefix} Ü "{uuid.uuid4().hex[:8]}"'
        with connect(self.lab.server(side)) as conn:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(name)))
        self.names.append(name)
        return name

    def stop_replication(self) -> None:
        """Disable every subscription in the test's databases and drop their slots.

        A move a test leaves streaming costs every later test: each walsender
        decodes the server's whole WAL, and the suite slowed by a quarter.
        """
        ident = psycopg.sql.Identifier
        for side in ("source", "target"):
            with connect(self.lab.server(side)) as conn:
                rows = conn.execute(
                    "SELECT datname FROM pg_database WHERE datname = ANY(%s) AND datallowconn",
                    (self.names,),
                ).fetchall()
            for db in (r["datname"] for r in rows):
                with connect(self.lab.server(side), db) as conn:
                    for sub in conn.execute(
                        "SELECT subname FROM pg_subscription s JOIN pg_database d "
                        "ON d.oid = s.subdbid WHERE d.datname = current_database()"
                    ).fetchall():
                        name = ident(sub["subname"])
                        conn.execute(psycopg.sql.SQL("ALTER SUBSCRIPTION {} DISABLE").format(name))
                        conn.execute(
                            psycopg.sql.SQL("ALTER SUBSCRIPTION {} SET (slot_name = NONE)").format(
                                name
                            )
                        )
                        conn.execute(psycopg.sql.SQL("DROP SUBSCRIPTION {}").format(name))
                    if conn.execute(
                        "SELECT 1 FROM pg_extension WHERE extname = 'pglogical'"
                    ).fetchone():
                        conn.execute(
                            "SELECT pglogical.alter_subscription_disable(sub_name, true) "
                            "FROM pglogical.subscription"
                        )
            with connect(self.lab.server(side)) as conn:
                # pglogical's supervisor starts a manager for each database that takes
                # connections, one after another: with the hundreds a run leaves, a new
                # database waited 31 s and more for its own, and its copy failed.
                for db in (r["datname"] for r in rows):
                    conn.execute(
                        psycopg.sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(
                            ident(db)
                        )
                    )
                conn.execute(
                    "SELECT pg_terminate_backend(active_pid), pg_sleep(0.05) "
                    "FROM pg_replication_slots WHERE active AND database = ANY(%s)",
                    (self.names,),
                )
                conn.execute(
                    "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
                    "WHERE NOT active AND database = ANY(%s)",
                    (self.names,),
                )


@pytest.fixture
def databases(lab: Lab) -> Iterator[Databases]:
    """Fresh databases for one test; their replication stopped when it ends."""
    made = Databases(lab)
    yield made
    made.stop_replication()


@pytest.fixture
def write_plan(lab: Lab, tmp_path: Path) -> Callable[..., Path]:
    """Write a plan for the lab to a file; keyword arguments replace or add top-level keys."""

    def write(databases: list[str], **changes: Any) -> Path:
        # A move name of its own: what a move leaves on the lab's servers is marked as its.
        data = yaml.safe_load(dump(lab.plan(databases, move=f"t{uuid.uuid4().hex[:8]}")))
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


def move_of(plan: Path) -> str:
    """The move name of a plan that write_plan wrote."""
    return str(yaml.safe_load(plan.read_text())["move"])


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


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A Kubernetes API server stand-in whose pods are local processes (tests/k8s)."""
    work = tmp_path / "cluster"
    work.mkdir()
    running = Cluster(work).start()
    yield running
    running.close()


@pytest.fixture
def kubeconfig(cluster: Cluster, tmp_path: Path) -> Path:
    """A kubeconfig the real client reads to reach the stand-in."""
    return cluster.kubeconfig(tmp_path / "kubeconfig")
