"""The local lab: two private PostgreSQL servers (source, target) for the demo and the tests.

`Lab.up()` runs `initdb` for each server on a free loopback port with
`wal_level=logical`, enough slots and workers, and `pglogical` preloaded when
it is installed; starts them; writes a ready plan whose password is a file
reference; and optionally loads a sample database. PostgreSQL refuses to run
as root, so as root the servers run as the `postgres` user, with their data in
a folder that user can reach. The same code gives the tests their servers.
"""

import json
import logging
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cutover.errors import PreconditionFailed, UsageError
from cutover.pg import admin, tools
from cutover.pg import load as load_sql
from cutover.pg.connect import Pool, connect
from cutover.plan import (
    FileRepoint,
    HttpWriter,
    Plan,
    Repoint,
    Server,
    SslMode,
    Thresholds,
    Writer,
    dump,
)

log = logging.getLogger(__name__)

SERVERS = ("source", "target")
SAMPLE_DATABASE = "app"
LOAD_ROLE = "app_writer"
LOAD_TABLES = 12
APP_KEY = "DATABASE_URL"
RUN_AS = "postgres"
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "wal_level": "logical",
    "max_connections": "200",
    "max_replication_slots": "32",
    "max_wal_senders": "32",
    "max_worker_processes": "32",
    "max_logical_replication_workers": "16",
    "max_sync_workers_per_subscription": "4",
    "track_commit_timestamp": "on",
    "shared_buffers": "256MB",
    # A lab is disposable: durability is traded for speed, as in the benchmarks.
    "fsync": "off",
    "full_page_writes": "off",
    "log_min_messages": "warning",
}


@dataclass(frozen=True)
class Instance:
    """One lab server."""

    name: str
    port: int
    datadir: str
    logfile: str


@dataclass(frozen=True)
class LabState:
    """What `lab up` made, kept in `<lab>/lab.json`."""

    bindir: str
    data_root: str
    run_as: str | None
    pglogical: bool
    instances: tuple[Instance, ...]

    def instance(self, name: str) -> Instance:
        """The server called `name`."""
        return next(i for i in self.instances if i.name == name)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _reachable_by_others(path: Path) -> bool:
    """Whether every folder above `path` lets other users through."""
    return all(p.stat().st_mode & 0o001 for p in path.resolve().parents)


class Lab:
    """A pair of local servers under one folder."""

    def __init__(
        self,
        root: Path,
        *,
        settings: dict[str, str] | None = None,
        per_server: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.root = root.resolve()
        self.settings = {**SETTINGS, **(settings or {})}
        self.per_server = per_server or {}
        self.state_file = self.root / "lab.json"
        self.password_file = self.root / "password"
        self.plan_file = self.root / "plan.yaml"
        self.app_env = self.root / "app.env"
        self.load_file = self.root / "load.json"
        self.write_log = self.root / "writes.jsonl"

    # -- reading ---------------------------------------------------------------------------

    def state(self) -> LabState | None:
        """What `up` made, if anything."""
        try:
            data = json.loads(self.state_file.read_text())
        except FileNotFoundError:
            return None
        data["instances"] = tuple(Instance(**i) for i in data["instances"])
        return LabState(**data)

    def server(self, name: str) -> Server:
        """How to reach a lab server as its superuser, and how to restart it."""
        state = self._require_state()
        return Server(
            host="127.0.0.1",
            port=state.instance(name).port,
            user="postgres",
            password=f"file:{self.password_file}",
            sslmode=SslMode.DISABLE,
            restart=[
                sys.executable,
                "-m",
                "cutover",
                "lab",
                "restart",
                name,
                "--dir",
                str(self.root),
            ],
        )

    def restart(self, name: str) -> None:
        """Restart one server (settings such as wal_level take effect)."""
        state = self._require_state()
        instance = state.instance(name)
        self._pg_ctl(
            state, "restart", "-D", instance.datadir, "-m", "fast", "-w", "-l", instance.logfile
        )

    def plan(self, databases: list[str], *, move: str = "lab") -> Plan:
        """A plan moving `databases` from the lab's source to its target.

        With the write load set up, the load is the writer tier (over HTTP) and
        the app's env file is the repoint target.
        """
        load = self.load_settings()
        writers, repoint = [], []
        if load is not None:
            control = f"http://127.0.0.1:{load['port']}"
            writers = [
                Writer(
                    name="load",
                    http=HttpWriter(
                        stop=f"{control}/pause",
                        start=f"{control}/resume",
                        status=f"{control}/drained",
                    ),
                )
            ]
            repoint = [Repoint(name="app-env", file=FileRepoint(path=self.app_env, key=APP_KEY))]
        return Plan(
            move=move,
            source=self.server("source"),
            target=self.server("target"),
            databases=databases,
            writers=writers,
            repoint=repoint,
            thresholds=Thresholds(lag_window=2.0),
            state_dir=self.root / "state",
        )

    def load_settings(self) -> dict[str, Any] | None:
        """The write load's port, database and tables, once set up."""
        try:
            data: dict[str, Any] = json.loads(self.load_file.read_text())
        except FileNotFoundError:
            return None
        return data

    def setup_load(self, *, database: str, tables: int = LOAD_TABLES) -> None:
        """The load's role on both servers, its tables on the source, and the app's env file."""
        password = secrets.token_urlsafe(18)
        for name in SERVERS:
            conn = connect(self.server(name), label=name)
            try:
                load_sql.ensure_login_role(conn, LOAD_ROLE, password)
            finally:
                conn.close()
        conn = connect(self.server("source"), database, label="source")
        try:
            load_sql.create_schema(conn, tables=tables, writer=LOAD_ROLE)
        finally:
            conn.close()
        port = self._require_state().instance("source").port
        self.app_env.touch(mode=0o600)
        dsn = f"postgresql://{LOAD_ROLE}:{password}@127.0.0.1:{port}/{database}"
        self.app_env.write_text(f"# the application's settings\n{APP_KEY}={dsn}\n")
        settings = {
            "port": free_port(),
            "database": database,
            "tables": load_sql.table_names(tables),
        }
        self.load_file.write_text(json.dumps(settings))

    def running(self) -> dict[str, bool]:
        """Whether each server runs."""
        state = self.state()
        if state is None:
            return {}
        return {i.name: self._is_running(state, i) for i in state.instances}

    # -- changing ----------------------------------------------------------------------------

    def up(self, *, sample: bool) -> LabState:
        """Create (once) and start both servers; write the plan; load the sample if asked."""
        self.root.mkdir(parents=True, exist_ok=True)
        state = self.state() or self._create()
        for instance in state.instances:
            if not self._is_running(state, instance):
                self._start(state, instance)
        databases = [SAMPLE_DATABASE] if sample else []
        if sample and self._load_sample():
            self.setup_load(database=SAMPLE_DATABASE)
        if databases or not self.plan_file.exists():
            self.plan_file.write_text(dump(self.plan(databases or [SAMPLE_DATABASE])))
        return state

    def down(self, *, purge: bool) -> None:
        """Stop both servers; with purge, delete their data and the lab folder."""
        state = self.state()
        if state is not None:
            for instance in state.instances:
                if self._is_running(state, instance):
                    self._pg_ctl(state, "stop", "-D", instance.datadir, "-m", "fast", "-w")
        if purge:
            if state is not None:
                shutil.rmtree(state.data_root, ignore_errors=True)
            shutil.rmtree(self.root, ignore_errors=True)

    def stop(self, name: str) -> None:
        """Stop one server (a fast shutdown): how a move sees a server go away."""
        state = self._require_state()
        self._pg_ctl(state, "stop", "-D", state.instance(name).datadir, "-m", "fast", "-w")

    def start(self, name: str) -> None:
        """Start one stopped server."""
        state = self._require_state()
        self._start(state, state.instance(name))

    def _create(self) -> LabState:
        bindir = tools.bindir()
        run_as = RUN_AS if os.geteuid() == 0 else None
        data_root = self._make_data_root(run_as)
        password = secrets.token_urlsafe(24)
        self.password_file.touch(mode=0o600)
        self.password_file.write_text(password + "\n")
        pglogical = (bindir.parent / "lib" / "pglogical.so").exists()
        instances = []
        for name in SERVERS:
            datadir = data_root / name
            pwfile = data_root / f".{name}.pw"
            pwfile.write_text(password + "\n")
            self._chown(pwfile, run_as)
            try:
                self._run(
                    run_as,
                    str(bindir / "initdb"),
                    "-D",
                    str(datadir),
                    "-U",
                    "postgres",
                    "--auth=scram-sha-256",
                    f"--pwfile={pwfile}",
                    "--encoding=UTF8",
                    "--no-locale",
                    "--no-sync",
                )
            finally:
                pwfile.unlink(missing_ok=True)
            instances.append(
                Instance(name, free_port(), str(datadir), str(data_root / f"{name}.log"))
            )
        state = LabState(str(bindir), str(data_root), run_as, pglogical, tuple(instances))
        for instance in instances:
            self._configure(state, instance)
        self.state_file.write_text(json.dumps(asdict(state), indent=1))
        return state

    def _make_data_root(self, run_as: str | None) -> Path:
        if run_as is None:
            root = self.root / "data"
            root.mkdir(exist_ok=True)
            return root
        # PostgreSQL runs as `postgres`, which must reach its data directory.
        if _reachable_by_others(self.root):
            root = self.root / "data"
            root.mkdir(exist_ok=True)
        else:
            root = Path(tempfile.mkdtemp(prefix="cutover-lab-", dir="/var/tmp"))
        root.chmod(0o755)
        self._chown(root, run_as)
        return root

    def _configure(self, state: LabState, instance: Instance) -> None:
        preload = {"shared_preload_libraries": "'pglogical'"} if state.pglogical else {}
        settings = {**preload, **self.settings, **self.per_server.get(instance.name, {})}
        settings["port"] = str(instance.port)
        lines = [f"{key} = {value}" for key, value in settings.items()]
        conf = Path(instance.datadir) / "postgresql.conf"
        # The data directory belongs to the server's user; appending as root keeps its owner.
        with conf.open("a") as handle:
            handle.write("\n# cutover lab\n" + "\n".join(lines) + "\n")

    def _start(self, state: LabState, instance: Instance) -> None:
        try:
            self._pg_ctl(
                state, "start", "-D", instance.datadir, "-l", instance.logfile, "-w", "-t", "60"
            )
        except UsageError as exc:
            tail = _tail(Path(instance.logfile))
            raise PreconditionFailed(
                f"the lab's {instance.name} server did not start: {exc.message}\n{tail}",
                hint=f"see {instance.logfile}; `cutover lab down --purge` starts afresh",
            ) from None

    def _is_running(self, state: LabState, instance: Instance) -> bool:
        result = subprocess.run(
            [str(Path(state.bindir) / "pg_ctl"), "status", "-D", instance.datadir],
            capture_output=True,
            text=True,
            check=False,
            user=state.run_as,
        )
        return result.returncode == 0

    def _load_sample(self) -> bool:
        """Create and fill the sample database; False if it was there already."""
        maintenance = connect(self.server("source"), label="source")
        try:
            if admin.database_exists(maintenance, SAMPLE_DATABASE):
                return False
            admin.create_database(maintenance, SAMPLE_DATABASE, target="source", dry_run=False)
        finally:
            maintenance.close()
        conn = connect(self.server("source"), SAMPLE_DATABASE, label="source")
        try:
            admin.run_script(conn, "lab_sample")
        finally:
            conn.close()
        return True

    def _require_state(self) -> LabState:
        state = self.state()
        if state is None:
            raise UsageError(
                f"there is no lab in {self.root}", hint="start one with `cutover lab up`"
            )
        return state

    def _pg_ctl(self, state: LabState, *args: str) -> None:
        self._run(state.run_as, str(Path(state.bindir) / "pg_ctl"), *args)

    @staticmethod
    def _run(run_as: str | None, *argv: str) -> None:
        result = subprocess.run(
            argv, capture_output=True, text=True, check=False, user=run_as, cwd="/"
        )
        if result.returncode != 0:
            output = (result.stderr or result.stdout).strip().splitlines()
            raise UsageError(
                f"{Path(argv[0]).name} failed: {output[-1] if output else result.returncode}",
                hint="see the lab's server log",
            )

    @staticmethod
    def _chown(path: Path, user: str | None) -> None:
        if user is not None:
            entry = pwd.getpwnam(user)
            os.chown(path, entry.pw_uid, entry.pw_gid)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def load_rows(pool: Pool, settings: dict[str, Any]) -> dict[str, dict[int, int]]:
    """The load tables' rows on the target: table -> id -> value."""
    conn = pool.get("target", settings["database"])
    return {table: load_sql.rows(conn, table) for table in settings["tables"]}
