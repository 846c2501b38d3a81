"""The local lab: two private PostgreSQL servers (source, target) for the demo and the tests.

`Lab.up()` runs `initdb` for each server on a free loopback port with
`wal_level=logical`, enough slots and workers, and `pglogical` preloaded when
it is installed; starts them; writes a ready plan whose password is a file
reference; and optionally loads a sample database. PostgreSQL refuses to run
as root, so as root the servers run as the `postgres` user, with their data in
a folder that user can reach. The same code gives the tests their servers.

The sample is laid out as applications lay out their databases: the
database and its tables belong to the application's own role (`shop`), and a
second role (`app_writer`) writes with table grants only; the write load
writes as both. With `managed`, cutover's plan reaches the source as
`cutover_admin`, who is no superuser: CREATEROLE, CREATEDB, REPLICATION,
membership in `shop`, `pg_signal_backend` and `pg_read_all_stats`, what a
managed service's admin user has (Cloud SQL's `postgres`). The target is
reached as its superuser: on PostgreSQL 15 only a superuser may subscribe.

With `pgbouncer`, a PgBouncer (cutover.pooler) stands between the write load
and the servers: the load's connection strings name it, its entry `app` names
the source, and the plan pauses it (the writer) and rewrites that entry (the
repoint) instead of stopping the load and rewriting its env file.
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
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cutover import load, pooler
from cutover.errors import PreconditionFailed, UsageError
from cutover.ledger import journal_for
from cutover.pg import admin, pgbouncer, tools
from cutover.pg import load as load_sql
from cutover.pg.connect import APPLICATION_NAME, connect
from cutover.plan import (
    Fence,
    FileRepoint,
    HttpWriter,
    PgBouncerRepoint,
    PgBouncerWriter,
    Plan,
    Repoint,
    Server,
    SslMode,
    Thresholds,
    Writer,
    dump,
)
from cutover.plan import load as load_plan
from cutover.steps import SWITCH_SCOPE, SwitchStep

log = logging.getLogger(__name__)

SERVERS = ("source", "target")
SAMPLE_DATABASE = "app"
OWNER_ROLE = "shop"  # owns the sample database and its tables, and writes to them
LOAD_ROLE = "app_writer"  # writes with table grants only
CONTROLLER_ROLE = "cutover_admin"  # the managed layout's source user: no superuser
CONTROLLER_GRANTS = (OWNER_ROLE, "pg_signal_backend", "pg_read_all_stats")
LOAD_TABLES = 12
APP_KEY = "DATABASE_URL"  # the owner's connection string
WRITER_KEY = "WRITER_URL"  # the grant-only writer's
APP_KEYS = (APP_KEY, WRITER_KEY)
RUN_AS = "postgres"
SETTINGS = {
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "wal_level": "logical",
    "max_connections": "200",
    # The tests leave many moves replicating in one lab: room for all of them.
    "max_replication_slots": "64",
    "max_wal_senders": "64",
    # pglogical's check asks for a manager per database of the server: the tests make many.
    "max_worker_processes": "200",
    "max_logical_replication_workers": "48",
    "max_sync_workers_per_subscription": "4",
    "track_commit_timestamp": "on",
    "shared_buffers": "256MB",
    # A lab is disposable: durability is traded for speed, as in the benchmarks.
    "fsync": "off",
    "full_page_writes": "off",
    "log_min_messages": "warning",
    # The launcher starts apply workers at most once per this interval (5 s by default):
    # a subscription enabled within 5 s of another's start would wait up to 5 s for its worker.
    "wal_retrieve_retry_interval": "'200ms'",
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
    managed: bool = False  # the source's plan user is CONTROLLER_ROLE, not a superuser
    pgbouncer: int | None = None  # the port of the PgBouncer in front of the servers, if any

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


@dataclass(frozen=True)
class LabAudit:
    """The write load's log against the target's rows."""

    rows_on_target: int  # in the load's tables
    write_pause: str  # as the last switch noted it in the ledger
    result: load.Audit


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

    def controller(self, name: str) -> Server:
        """How cutover's plan reaches a lab server: the superuser, or the managed layout's admin."""
        server = self.server(name)
        if name == "source" and self._require_state().managed:
            return server.model_copy(update={"user": CONTROLLER_ROLE})
        return server

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
        the app's env file is the repoint target; in a lab with a PgBouncer, the
        pool is both (its entry for the load's database).
        """
        load = self.load_settings()
        bouncer = self.bouncer()
        writers, repoint = [], []
        if load is not None and bouncer is not None:  # the load's pool: paused and repointed
            entries = [load["database"]]
            writers = [
                Writer(
                    name="pool",
                    pgbouncer=PgBouncerWriter(pgbouncers=[bouncer.spec()], databases=entries),
                )
            ]
            repoint = [
                Repoint(
                    name="pool",
                    pgbouncer=PgBouncerRepoint(pgbouncers=[bouncer.spec()], databases=entries),
                )
            ]
        elif load is not None:
            control = f"http://127.0.0.1:{load['port']}"
            writers = [
                Writer(
                    name="load",
                    http=HttpWriter(
                        stop=f"{control}/pause",
                        start=f"{control}/resume",
                        status=f"{control}/drained",
                        health=f"{control}/healthy",
                    ),
                )
            ]
            repoint = [
                Repoint(name=f"app-env-{key.lower()}", file=FileRepoint(path=self.app_env, key=key))
                for key in APP_KEYS
            ]
        return Plan(
            move=move,
            source=self.controller("source"),
            target=self.controller("target"),
            databases=databases,
            writers=writers,
            repoint=repoint,
            thresholds=Thresholds(lag_window=2.0),
            fence=Fence(roles=[OWNER_ROLE, LOAD_ROLE] if load is not None else None),
            state_dir=self.root / "state",
        )

    def bouncer(self) -> pooler.Bouncer | None:
        """The lab's PgBouncer, if it has one: in `<data>/pgbouncer`, which its user reaches."""
        state = self.state()
        if state is None or state.pgbouncer is None:
            return None
        return pooler.Bouncer(Path(state.data_root) / "pgbouncer", state.pgbouncer)

    def pool(self) -> pgbouncer.PoolDatabase | None:
        """The sample database as the lab's PgBouncer shows it (where it points, paused)."""
        bouncer = self.bouncer()
        if bouncer is None or not bouncer.is_running():
            return None
        return pgbouncer.shown(bouncer.spec()).get(SAMPLE_DATABASE)

    def load_settings(self) -> dict[str, Any] | None:
        """The write load's port, database and tables, once set up."""
        try:
            data: dict[str, Any] = json.loads(self.load_file.read_text())
        except FileNotFoundError:
            return None
        return data

    def audit(self) -> LabAudit:
        """Every acknowledged write of the load against the target, after a switch."""
        settings = self.load_settings()
        state = self.state()
        if settings is None or state is None or not self.write_log.exists():
            raise UsageError("there is no write log to audit", hint="run `cutover lab load` first")
        plan = load_plan(self.plan_file)
        journal = journal_for(plan)
        fenced = journal.get(f"{SWITCH_SCOPE}/switch.{SwitchStep.FENCE_SOURCE}")
        with connect(plan.target, settings["database"], label="target") as conn:
            rows = {table: load_sql.rows(conn, table) for table in settings["tables"]}
        result = load.audit(
            self.write_log,
            rows,
            source_port=state.instance("source").port,
            fenced_at=fenced.ended_at if fenced else None,
            switch_window=journal.pause_window(phase="switch", scope=SWITCH_SCOPE),
        )
        pause = next(
            (e.detail for e in reversed(journal.events()) if e.kind == "write_pause" and e.detail),
            "no switch yet",
        )
        return LabAudit(sum(len(r) for r in rows.values()), pause, result)

    def setup_load(self, *, database: str, tables: int = LOAD_TABLES) -> None:
        """The load's tables on the source (the owner's, and one without a key), the app's env."""
        conn = connect(self.server("source"), database, label="source")
        try:
            load_sql.create_schema(
                conn, tables=tables, writer=LOAD_ROLE, owner=OWNER_ROLE, keyless=True
            )
        finally:
            conn.close()
        state = self._require_state()
        # Through the pool, its entry for the database has the database's name.
        port = state.pgbouncer or state.instance("source").port
        password = self._app_password()
        self.app_env.touch(mode=0o600)
        lines = [
            f"{key}=postgresql://{role}:{password}@127.0.0.1:{port}/{database}"
            for key, role in zip(APP_KEYS, (OWNER_ROLE, LOAD_ROLE), strict=True)
        ]
        self.app_env.write_text("# the application's settings\n" + "\n".join(lines) + "\n")
        settings = {
            "port": free_port(),
            "database": database,
            "tables": [*load_sql.table_names(tables), load_sql.KEYLESS],
        }
        self.load_file.write_text(json.dumps(settings))

    def _app_password(self) -> str:
        """The application roles' password (kept in the lab, mode 0600)."""
        path = self.root / "app-password"
        if not path.exists():
            path.touch(mode=0o600)
            path.write_text(secrets.token_urlsafe(18) + "\n")
        return path.read_text().strip()

    def _create_roles(self, state: LabState) -> None:
        """The application's roles on both servers; the managed layout's admin on the source."""
        app_password = self._app_password()
        for name in SERVERS:
            conn = connect(self.server(name), label=name)
            try:
                for role in (OWNER_ROLE, LOAD_ROLE):
                    load_sql.ensure_login_role(conn, role, app_password)
                if state.managed and name == "target":  # as on Cloud SQL: both sides have it
                    load_sql.ensure_login_role(conn, CONTROLLER_ROLE, app_password)
                if name == "source" and state.managed:
                    password = self.password_file.read_text().strip()
                    load_sql.ensure_login_role(
                        conn,
                        CONTROLLER_ROLE,
                        password,
                        options="NOSUPERUSER CREATEROLE CREATEDB REPLICATION",
                    )
                    for granted in CONTROLLER_GRANTS:
                        load_sql.grant_role(conn, granted, CONTROLLER_ROLE)
            finally:
                conn.close()

    @contextmanager
    def cutover_sessions(self, every: float = 0.005) -> Iterator[list[dict[str, list[str]]]]:
        """Samples, taken every `every` seconds until the block ends, of the sessions cutover
        holds on each server (`application_name` cutover, client backends): their databases."""
        samples: list[dict[str, list[str]]] = []
        done = threading.Event()

        def sample() -> None:
            with (
                connect(self.server("source"), label="source") as source,
                connect(self.server("target"), label="target") as target,
            ):
                while not done.is_set():
                    samples.append(
                        {
                            side: [
                                row["datname"]
                                for row in conn.execute(
                                    "SELECT datname FROM pg_catalog.pg_stat_activity WHERE "
                                    "application_name = %s AND backend_type = 'client backend'",
                                    (APPLICATION_NAME,),
                                )
                            ]
                            for side, conn in (("source", source), ("target", target))
                        }
                    )
                    done.wait(every)

        sampler = threading.Thread(target=sample, name="sessions", daemon=True)
        sampler.start()
        try:
            yield samples
        finally:
            done.set()
            sampler.join()

    def running(self) -> dict[str, bool]:
        """Whether each server runs."""
        state = self.state()
        if state is None:
            return {}
        return {i.name: self._is_running(state, i) for i in state.instances}

    # -- changing ----------------------------------------------------------------------------

    def up(self, *, sample: bool, managed: bool = False, with_pgbouncer: bool = False) -> LabState:
        """Create (once) and start both servers; write the plan; load the sample if asked.

        `managed` lays out a source whose plan user is no superuser, `with_pgbouncer`
        puts a PgBouncer between the write load and the servers (both once, at creation).
        """
        self.root.mkdir(parents=True, exist_ok=True)
        state = self.state() or self._create(managed=managed, with_pgbouncer=with_pgbouncer)
        for instance in state.instances:
            if not self._is_running(state, instance):
                self._start(state, instance)
        self._create_roles(state)
        self._start_pgbouncer(state)
        databases = [SAMPLE_DATABASE] if sample else []
        if sample and self._load_sample():
            self.setup_load(database=SAMPLE_DATABASE)
        if databases or not self.plan_file.exists():
            self.plan_file.write_text(dump(self.plan(databases or [SAMPLE_DATABASE])))
        return state

    def down(self, *, purge: bool) -> None:
        """Stop the PgBouncer and both servers; with purge, delete their data and the lab folder."""
        state = self.state()
        bouncer = self.bouncer()
        if bouncer is not None:
            bouncer.stop()
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

    def _start_pgbouncer(self, state: LabState) -> None:
        """Configure the lab's PgBouncer the first time, and start it if it does not run.

        Its entry names the source until a switch rewrites it: an existing
        configuration is kept, so `up` after a switch leaves the pool on the target.
        """
        bouncer = self.bouncer()
        if bouncer is None:
            return
        if not bouncer.config.exists():
            password = self._app_password()
            bouncer.configure(
                {SAMPLE_DATABASE: pooler.entry(self.server("source"), SAMPLE_DATABASE)},
                {OWNER_ROLE: password, LOAD_ROLE: password},
                run_as=state.run_as,
            )
        bouncer.start(run_as=state.run_as)

    def _create(self, *, managed: bool, with_pgbouncer: bool) -> LabState:
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
        state = LabState(
            str(bindir),
            str(data_root),
            run_as,
            pglogical,
            tuple(instances),
            managed=managed,
            pgbouncer=free_port() if with_pgbouncer else None,
        )
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
            admin.create_database(
                maintenance, SAMPLE_DATABASE, where="source", dry_run=False, owner=OWNER_ROLE
            )
        finally:
            maintenance.close()
        conn = connect(self.server("source"), SAMPLE_DATABASE, label="source")
        try:
            admin.run_script(conn, "lab_sample", as_role=OWNER_ROLE)
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
