"""Real PostgreSQL behind the stand-in: migration jobs, instances, backups and lag on lab servers.

`PglogicalJobs` is the stand-in's `JobBackend` and `InstanceBackend` for
Cloud SQL instance ids that name lab servers (`lab_instances`). What it does
is what DMS does and leaves, as Google documents it:

- start: for each database of the source (all but templates, `postgres` and
  `cloudsql*`; or the job's SPECIFIED_OBJECTS; or the `databases` the backend
  was given), the database is made on the destination, owned by the role
  `cloudsqlexternalsync`, and the schema is restored as that role, so every
  object belongs to it; pglogical is installed on both sides, a provider node
  and a replication set of every table (no sequences) on the source, a
  subscriber node and a subscription with `synchronize_data` on the
  destination. The destination database is read-only for every session but
  pglogical's (`default_transaction_read_only`, which the subscriber node's own
  connection string overrides); sessions open at start are ended.
- verify: an error when the source's `wal_level` is not logical or pglogical
  is not loaded, when a Cloud SQL source lacks `cloudsql.logical_decoding` or
  `cloudsql.enable_pglogical` (or their restart), when a table has no primary
  key, or when the destination already has one of the databases.
- phase: FULL_DUMP until pglogical has copied every table, then CDC; a set-up
  that failed makes the job FAILED with its error.
- stop: the subscription is disabled (the stand-in has no resume).
- promote: the subscription is disabled, its worker waited out, then dropped
  (pglogical drops its slot on the source); the database is writable again.
  Sequences are left as the dump made them, behind the source's ("SEQUENCE
  states on the destination might vary from the source": the engine sets them).
  Ownership stays with `cloudsqlexternalsync`.
- delete: the job's subscription (a job never promoted) and subscriber node on
  the destination, and its replication set and slot on the source, are dropped;
  never a database nor its rows (a forced delete included). The source keeps the
  pglogical extension and its provider node: DMS asks the user to install the
  extension, and the reference says nothing of DMS removing either [inference].
- flags: a patch of `databaseFlags` is applied with ALTER SYSTEM (a flag set
  through the API and left out of a later patch is RESET) and a reload;
  `cloudsql.logical_decoding` sets `wal_level` only when it is not `logical`
  already, `cloudsql.enable_pglogical` is recorded. A setting that needs a
  restart, or a change of those two flags, stays pending (`pending_restart`)
  until `instances.restart`, which restarts the lab server; its operation is
  done when the server accepts connections again.
- backups: `pg_dump -Fc` of every database of the instance into `backup_dir`.
- lag: a sampler measures every `period` seconds, on the source, how far each
  running job's slot is behind (`pg_current_wal_lsn()` - `confirmed_flush_lsn`,
  in bytes; in seconds, the age of the oldest sample whose WAL position the
  slot has not confirmed). `timeSeries.list` answers each point only `delay`
  seconds after it was measured, as Cloud Monitoring does (1-3 minutes).
"""

import os
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from hashlib import sha256
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row

from cutover.cloud.monitoring import (
    CLOUDSQL_LAG_BYTES,
    CLOUDSQL_RESOURCE,
    DMS_LAG_BYTES,
    DMS_LAG_SECONDS,
    DMS_RESOURCE,
)
from cutover.lab import Lab
from cutover.pg import tools
from tests.gcp.standin import Json, Standin

Connection = psycopg.Connection[dict[str, Any]]

OWNER = "cloudsqlexternalsync"  # the role DMS leaves owning every migrated object
SKIPPED = re.compile(r"^(postgres|template0|template1|cloudsql.*)$")
SKIPPED_SCHEMAS = ("pglogical", "information_schema")
READ_WRITE = "-c default_transaction_read_only=off"
LOGICAL_DECODING = "cloudsql.logical_decoding"
ENABLE_PGLOGICAL = "cloudsql.enable_pglogical"
PGLOGICAL = re.compile(r"\b(EXTENSION|SCHEMA) (- )?pglogical\b")  # in a pg_restore listing


@dataclass(frozen=True)
class LabInstance:
    """The lab server behind a Cloud SQL instance id: where it listens, its superuser."""

    lab: Lab
    server: str  # the lab's name for it: source | target
    host: str
    port: int
    conninfo: str  # the superuser's, with its password, to the `postgres` database

    def dsn(self, dbname: str, *, options: str | None = None) -> str:
        """The superuser's connection string to one database."""
        extra = {"options": options} if options else {}
        return make_conninfo(self.conninfo, dbname=dbname, **extra)

    def connect(self, dbname: str = "postgres", *, writable: bool = True) -> Connection:
        """An autocommit superuser session; `writable` overrides a read-only database."""
        return psycopg.connect(
            self.dsn(dbname, options=READ_WRITE if writable else None),
            autocommit=True,
            row_factory=dict_row,
            application_name="dms-standin",
        )


def lab_instances(lab: Lab, names: Mapping[str, str]) -> dict[str, LabInstance]:
    """Instance id -> lab server, e.g. {"shop-db": "source", "shop-db-16": "target"}."""
    password = lab.password_file.read_text().strip()
    found = {}
    for instance, server in names.items():
        reach = lab.server(server)
        conninfo = make_conninfo(
            host=reach.host, port=reach.port, user=reach.user, password=password, dbname="postgres"
        )
        found[instance] = LabInstance(lab, server, reach.host, reach.port, conninfo)
    return found


class Thread:
    """Work in a thread of its own: the stand-in's `Work`."""

    def __init__(self, run: Callable[[], None], *, name: str) -> None:
        self._error: str | None = None
        self._thread = threading.Thread(target=self._main, args=(run,), name=name, daemon=True)
        self._thread.start()

    def _main(self, run: Callable[[], None]) -> None:
        try:
            run()
        except Exception as exc:
            self._error = f"{type(exc).__name__}: {exc}".strip()

    def finished(self) -> bool:
        return not self._thread.is_alive()

    def error(self) -> str | None:
        return self._error

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def _tool(program: str, *args: str, dsn: str, input: bytes | None = None) -> bytes:
    """Run one of PostgreSQL's programs on `dsn`; its password goes by the environment."""
    params = conninfo_to_dict(dsn)
    password = str(params.pop("password", ""))
    result = subprocess.run(
        [str(tools.bindir() / program), *args, "-d", make_conninfo(**params)],  # type: ignore[arg-type]
        input=input,
        capture_output=True,
        check=False,
        env={**os.environ, "PGPASSWORD": password},
    )
    if result.returncode != 0:
        raise RuntimeError(f"{program}: {result.stderr.decode(errors='replace').strip()}")
    return result.stdout


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def _short(name: str) -> str:
    """A job's id as a short name for pglogical objects (unique per job name)."""
    tail = re.sub(r"[^a-z0-9_]", "_", name.rsplit("/", 1)[-1].lower())[:20]
    return f"dms_{tail}_{sha256(name.encode()).hexdigest()[:6]}"


@dataclass
class Run:
    """One started job: its lab servers, databases, pglogical names and progress."""

    job: str
    source: LabInstance
    destination: LabInstance
    provider_dsn: str  # as the destination reaches the source: the profile's user
    databases: list[str]
    name: str  # the replication set, subscription and subscriber node
    setup: Thread | None = None
    slots: dict[str, str] = field(default_factory=dict)  # database -> slot on the source
    promoted: bool = False
    ended: bool = False


@dataclass(frozen=True)
class Sample:
    """One measure of a job's lag in one database."""

    at: datetime
    job: str
    database: str
    bytes: int
    seconds: int


class PglogicalJobs:
    """DMS migration jobs as pglogical replication between lab servers; lab-backed instances."""

    def __init__(
        self,
        instances: Mapping[str, LabInstance],
        *,
        backup_dir: Path,
        databases: Sequence[str] | None = None,
        delay: float = 60.0,
        period: float = 60.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        sync_timeout: float = 120.0,
        require_flags: bool = True,
    ) -> None:
        self.instances = dict(instances)
        self.backup_dir = backup_dir
        self.only = list(databases) if databases is not None else None
        self.delay = delay
        self.period = period
        self.clock = clock
        self.sync_timeout = sync_timeout
        self.require_flags = require_flags
        self.standin: Standin | None = None
        self.lock = threading.Lock()
        self.runs: dict[str, Run] = {}
        self.samples: list[Sample] = []
        self.positions: dict[str, list[tuple[datetime, int]]] = {}  # instance -> (at, WAL lsn)
        self.pending_restart: set[str] = set()
        self.recorded: dict[str, dict[str, str]] = {}  # instance -> cloudsql.* flags as set
        self.backups: dict[tuple[str, str], list[Path]] = {}
        self._stop = threading.Event()
        self._sampler: threading.Thread | None = None

    def attach(self, standin: Standin) -> None:
        """Read profiles (and their input-only passwords) from this stand-in."""
        self.standin = standin

    def close(self) -> None:
        """Stop the sampler and wait for every job's set-up."""
        self._stop.set()
        if self._sampler is not None:
            self._sampler.join(timeout=10)
        for run in list(self.runs.values()):
            if run.setup is not None:
                run.setup.join(timeout=self.sync_timeout)

    # -- resolving a job's profiles to lab servers

    def _profile(self, name: str) -> Json:
        assert self.standin is not None, "attach the backend to its stand-in"
        profile = self.standin.profiles.get(name)
        if profile is None:
            raise LookupError(f"connection profile {name} does not exist")
        return profile

    def _source(self, job: Json) -> tuple[LabInstance, str]:
        """The source's lab server, and how the destination reaches it (the profile's user)."""
        profile = self._profile(job["source"])
        pg = profile.get("postgresql") or {}
        instance = self.instances.get(pg.get("cloudSqlId") or "")
        if instance is None:
            instance = next(
                (
                    i
                    for i in self.instances.values()
                    if (i.host, i.port) == (pg.get("host"), pg.get("port"))
                ),
                None,
            )
        if instance is None:
            raise LookupError(
                f"the source is not reachable on {pg.get('host')}:{pg.get('port')}"
                " (no lab server there)"
            )
        password = self.standin.passwords.get(profile["name"]) if self.standin else None
        if pg.get("username") and password:
            # A Cloud SQL source is reached at its instance's address, as the profile's user.
            dsn = make_conninfo(
                host=instance.host, port=instance.port, user=pg["username"], password=password
            )
        else:
            dsn = instance.conninfo
        return instance, dsn

    def _destination(self, job: Json) -> LabInstance:
        profile = self._profile(job["destination"])
        pg = profile.get("postgresql") or {}
        # An existing instance is named in the profile; a new one takes the profile's id.
        instance_id = pg.get("cloudSqlId") or profile["name"].rsplit("/", 1)[-1]
        instance = self.instances.get(instance_id)
        if instance is None:
            raise LookupError(f"the destination instance {instance_id} is not a lab server")
        return instance

    def _databases(self, job: Json, source: LabInstance) -> list[str]:
        """What the job migrates: every database of the source, or those it selects."""
        with source.connect() as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_catalog.pg_database "
                "WHERE datallowconn AND NOT datistemplate ORDER BY datname"
            ).fetchall()
        names = [r["datname"] for r in rows if not SKIPPED.match(r["datname"])]
        config = (job.get("objectsConfig") or {}).get("sourceObjectsConfig") or {}
        if config.get("objectsSelectionType") == "SPECIFIED_OBJECTS":
            wanted = {
                c["objectIdentifier"]["database"]
                for c in config.get("objectConfigs", [])
                if c.get("objectIdentifier", {}).get("database")
            }
            names = [n for n in names if n in wanted]
        if self.only is not None:
            names = [n for n in names if n in self.only]
        return names

    # -- JobBackend

    def created(self, job: Json) -> None:
        pass

    def databases(self, job: Json) -> list[str] | None:
        run = self.runs.get(job["name"])
        return list(run.databases) if run is not None else None

    def verify(self, job: Json) -> str | None:
        try:
            source, _ = self._source(job)
            destination = self._destination(job)
            databases = self._databases(job, source)
        except LookupError as exc:
            return str(exc)
        with source.connect() as conn:
            settings = {
                r["name"]: r["setting"]
                for r in conn.execute(
                    "SELECT name, setting FROM pg_catalog.pg_settings "
                    "WHERE name IN ('wal_level', 'shared_preload_libraries')"
                ).fetchall()
            }
        flags_error = self._source_flags_error(job, source)
        if flags_error is not None:
            return flags_error
        if settings.get("wal_level") != "logical":
            return (
                f"the source's wal_level is {settings.get('wal_level')}, not logical: "
                f"set {LOGICAL_DECODING}=on and restart it"
            )
        if "pglogical" not in settings.get("shared_preload_libraries", ""):
            return f"pglogical is not loaded on the source: set {ENABLE_PGLOGICAL}=on and restart"
        if not databases:
            return "the source has no database to migrate"
        for db in databases:
            with source.connect(db) as conn:
                keyless = conn.execute(
                    "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c "
                    "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition "
                    "AND n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg\\_%%' "
                    "AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_constraint k "
                    "WHERE k.conrelid = c.oid AND k.contype = 'p') ORDER BY 1, 2",
                    (list(SKIPPED_SCHEMAS),),
                ).fetchall()
            if keyless:
                tables = ", ".join(f"{r['nspname']}.{r['relname']}" for r in keyless)
                return f"tables without a primary key in database {db}: {tables}"
            with destination.connect() as conn:
                there = conn.execute(
                    "SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (db,)
                ).fetchone()
            if there and not self._is_ours(job, destination, db):
                return f"the destination already has a database {db}: it must hold none"
        return None

    def _source_flags_error(self, job: Json, source: LabInstance) -> str | None:
        """A Cloud SQL source needs both flags on, and the restart they take done."""
        if not self.require_flags or self.standin is None:
            return None
        project = job["name"].split("/")[1]
        for instance_id, server in self.instances.items():
            record = self.standin.instances.get((project, instance_id))
            if server != source or record is None:
                continue
            flags = {f["name"]: f.get("value") for f in record["settings"]["databaseFlags"]}
            for flag in (LOGICAL_DECODING, ENABLE_PGLOGICAL):
                if flags.get(flag) != "on":
                    return f"the source instance {instance_id} needs the flag {flag}=on"
            if instance_id in self.pending_restart:
                return f"the source instance {instance_id} must be restarted for its flags"
        return None

    def _is_ours(self, job: Json, destination: LabInstance, db: str) -> bool:
        """Whether the destination's database `db` is this job's (a start run again)."""
        with destination.connect(db) as conn:
            if not conn.execute(
                "SELECT 1 FROM pg_extension WHERE extname = 'pglogical'"
            ).fetchone():
                return False
            row = conn.execute(
                "SELECT 1 FROM pglogical.node WHERE node_name = %s", (_short(job["name"]),)
            ).fetchone()
            return row is not None

    def started(self, job: Json) -> None:
        source, provider_dsn = self._source(job)
        destination = self._destination(job)
        run = Run(
            job["name"],
            source,
            destination,
            provider_dsn,
            self._databases(job, source),
            _short(job["name"]),
        )
        with self.lock:
            self.runs[job["name"]] = run
        run.setup = Thread(lambda: self._set_up(run), name=f"setup {run.name}")
        self._start_sampler()

    def phase(self, job: Json) -> str:
        run = self.runs.get(job["name"])
        if run is None or run.setup is None or not run.setup.finished():
            return "FULL_DUMP"
        error = run.setup.error()
        if error is not None:
            job["state"] = "FAILED"
            job["error"] = {"code": 9, "message": error}
            return "FULL_DUMP"
        return "CDC" if all(self._synced(run, db) for db in run.databases) else "FULL_DUMP"

    def stopped(self, job: Json) -> None:
        """Replication stops (the subscription disabled); the stand-in has no resume."""
        run = self.runs.get(job["name"])
        if run is None:
            return
        for db in run.databases:
            with run.destination.connect(db) as conn:
                conn.execute(
                    "SELECT pglogical.alter_subscription_disable(sub_name, true) "
                    "FROM pglogical.subscription WHERE sub_name = %s",
                    (run.name,),
                )

    def promoted(self, job: Json) -> None:
        run = self.runs[job["name"]]
        for db in run.databases:
            with run.destination.connect(db) as conn:
                self._end_subscription(conn, run.name)
                conn.execute(
                    sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(
                        _ident(db)
                    )
                )
        with self.lock:
            run.promoted = True

    def deleted(self, job: Json) -> None:
        run = self.runs.get(job["name"])
        if run is None:
            return
        if run.setup is not None:
            run.setup.join(timeout=self.sync_timeout)
        for db in run.databases:
            with run.destination.connect(db) as conn:
                if not _has_pglogical(conn):
                    continue
                self._end_subscription(conn, run.name)
                conn.execute(
                    "SELECT pglogical.drop_node(node_name := %s, ifexists := true)", (run.name,)
                )
            with run.source.connect(db) as conn:
                if _has_pglogical(conn):
                    conn.execute(
                        "SELECT pglogical.drop_replication_set(set_name := %s, ifexists := true)",
                        (run.name,),
                    )
                slot = run.slots.get(db)
                if slot:
                    conn.execute(
                        "SELECT pg_catalog.pg_drop_replication_slot(slot_name) "
                        "FROM pg_catalog.pg_replication_slots WHERE slot_name = %s AND NOT active",
                        (slot,),
                    )
        with self.lock:
            run.ended = True

    # -- the job's set-up, in its own thread

    def _set_up(self, run: Run) -> None:
        with run.destination.connect() as conn:
            if not conn.execute(
                "SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (OWNER,)
            ).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(_ident(OWNER)))
        for db in run.databases:
            self._set_up_database(run, db)

    def _set_up_database(self, run: Run, db: str) -> None:
        source, destination = run.source, run.destination
        with destination.connect() as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s", (db,)
            ).fetchone()
            if not exists:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(_ident(db), _ident(OWNER))
                )
        self._copy_schema(source, destination, db)
        with source.connect(db) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pglogical")
            if conn.execute("SELECT 1 FROM pglogical.local_node").fetchone() is None:
                conn.execute(
                    "SELECT pglogical.create_node(node_name := %s, dsn := %s)",
                    (f"{run.name}_source", source.dsn(db)),
                )
            conn.execute(
                "SELECT pglogical.create_replication_set(set_name := %s) "
                "WHERE NOT EXISTS (SELECT 1 FROM pglogical.replication_set WHERE set_name = %s)",
                (run.name, run.name),
            )
            schemas = [
                r["nspname"]
                for r in conn.execute(
                    "SELECT nspname FROM pg_catalog.pg_namespace "
                    "WHERE nspname <> ALL(%s) AND nspname NOT LIKE 'pg\\_%%'",
                    (list(SKIPPED_SCHEMAS),),
                ).fetchall()
            ]
            # Tables only: DMS carries sequences at promote, this stand-in never.
            conn.execute(
                "SELECT pglogical.replication_set_add_all_tables(%s, %s, false)",
                (run.name, schemas),
            )
        with destination.connect(db) as conn:
            conn.execute("CREATE EXTENSION IF NOT EXISTS pglogical")
            if conn.execute("SELECT 1 FROM pglogical.local_node").fetchone() is None:
                # pglogical's table copy writes through this string: it must stay writable.
                conn.execute(
                    "SELECT pglogical.create_node(node_name := %s, dsn := %s)",
                    (run.name, destination.dsn(db, options=READ_WRITE)),
                )
            conn.execute(
                sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(
                    _ident(db)
                )
            )
            conn.execute(
                "SELECT pg_catalog.pg_terminate_backend(pid) FROM pg_catalog.pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_catalog.pg_backend_pid() "
                "AND backend_type = 'client backend'"
            )
            conn.execute(
                "SELECT pglogical.create_subscription(subscription_name := %s, "
                "provider_dsn := %s, replication_sets := %s, synchronize_structure := false, "
                "synchronize_data := true, forward_origins := '{}') "
                "WHERE NOT EXISTS (SELECT 1 FROM pglogical.subscription WHERE sub_name = %s)",
                (run.name, make_conninfo(run.provider_dsn, dbname=db), [run.name], run.name),
            )
            row = conn.execute(
                "SELECT sub_slot_name FROM pglogical.subscription WHERE sub_name = %s",
                (run.name,),
            ).fetchone()
        assert row is not None
        with self.lock:
            run.slots[db] = row["sub_slot_name"]

    def _copy_schema(self, source: LabInstance, destination: LabInstance, db: str) -> None:
        """The source's schema restored as `cloudsqlexternalsync`: it owns every object."""
        with destination.connect(db) as conn:
            if conn.execute(
                "SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n "
                "ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') "
                "AND n.nspname <> ALL(%s) AND n.nspname NOT LIKE 'pg\\_%%' LIMIT 1",
                (list(SKIPPED_SCHEMAS),),
            ).fetchone():
                return  # restored by an earlier start
        dump = _tool("pg_dump", "-Fc", "--schema-only", dsn=source.dsn(db))
        listing = subprocess.run(
            [str(tools.bindir() / "pg_restore"), "-l"], input=dump, capture_output=True, check=True
        ).stdout.decode()
        # pglogical is the replication's own: the destination installs it by itself.
        kept = "\n".join(line for line in listing.splitlines() if not PGLOGICAL.search(line))
        list_file = self.backup_dir / f"restore-{sha256(db.encode()).hexdigest()[:8]}.list"
        list_file.parent.mkdir(parents=True, exist_ok=True)
        list_file.write_text(kept + "\n")
        _tool(
            "pg_restore",
            "--no-owner",
            "--no-privileges",
            f"--role={OWNER}",
            "--exit-on-error",
            "-L",
            str(list_file),
            dsn=destination.dsn(db, options=READ_WRITE),
            input=dump,
        )

    def _synced(self, run: Run, db: str) -> bool:
        """Whether pglogical copied every table of `db` (its sync status `r`, ready)."""
        with run.destination.connect(db, writable=False) as conn:
            row = conn.execute(
                "SELECT count(*) AS n, count(*) FILTER (WHERE ss.sync_status = 'r') AS ready "
                "FROM pglogical.local_sync_status ss JOIN pglogical.subscription s "
                "ON s.sub_id = ss.sync_subid WHERE s.sub_name = %s",
                (run.name,),
            ).fetchone()
        return row is not None and row["n"] > 0 and row["n"] == row["ready"]

    def _end_subscription(self, conn: Connection, name: str) -> None:
        """Disable, wait for the apply worker to end, drop (pglogical drops the slot)."""
        if not conn.execute(
            "SELECT 1 FROM pglogical.subscription WHERE sub_name = %s", (name,)
        ).fetchone():
            return
        conn.execute("SELECT pglogical.alter_subscription_disable(%s, true)", (name,))
        deadline = time.monotonic() + 30
        while conn.execute(
            "SELECT 1 FROM pg_catalog.pg_stat_activity a JOIN pglogical.subscription s "
            "ON s.sub_name = %s WHERE a.datname = current_database() AND a.application_name "
            "LIKE 'pglogical apply %%:' || s.sub_id",
            (name,),
        ).fetchone():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the apply worker of {name} did not end")
            time.sleep(0.05)
        conn.execute("SELECT pglogical.drop_subscription(%s, true)", (name,))

    # -- InstanceBackend

    def serves(self, instance: str) -> bool:
        return instance in self.instances

    def set_flags(self, instance: str, flags: list[Json]) -> str | None:
        server = self.instances[instance]
        wanted = {f["name"]: str(f.get("value", "")) for f in flags}
        before = dict(self.recorded.get(instance, {}))
        try:
            with server.connect() as conn:
                known = {
                    r["name"]
                    for r in conn.execute("SELECT name FROM pg_catalog.pg_settings").fetchall()
                }
                for name in wanted:
                    if not name.startswith("cloudsql.") and name not in known:
                        return f"invalid flag: {name}"
                for name, value in wanted.items():
                    if name == LOGICAL_DECODING and value == "on":
                        current = conn.execute("SHOW wal_level").fetchone()
                        if current is not None and current["wal_level"] != "logical":
                            conn.execute("ALTER SYSTEM SET wal_level = logical")
                    elif not name.startswith("cloudsql."):
                        conn.execute(
                            sql.SQL("ALTER SYSTEM SET {} = {}").format(
                                _ident(name), sql.Literal(value)
                            )
                        )
                # A flag left out goes back to its default; only those set through the API.
                for name in before:
                    if name not in wanted and not name.startswith("cloudsql."):
                        conn.execute(sql.SQL("ALTER SYSTEM RESET {}").format(_ident(name)))
                conn.execute("SELECT pg_catalog.pg_reload_conf()")
                time.sleep(0.1)  # the reload is a signal: let the postmaster read the files
                pending = conn.execute(
                    "SELECT count(*) AS n FROM pg_catalog.pg_settings WHERE pending_restart"
                ).fetchone()
        except psycopg.Error as exc:
            return f"invalid flag value: {exc}".strip()
        with self.lock:
            self.recorded[instance] = wanted
            changed = {n for n in wanted.keys() | before.keys() if wanted.get(n) != before.get(n)}
            if (pending and pending["n"]) or changed & {LOGICAL_DECODING, ENABLE_PGLOGICAL}:
                # Cloud SQL restarts for these two as well; here the restart is the caller's.
                self.pending_restart.add(instance)
        return None

    def restart(self, instance: str) -> Thread:
        server = self.instances[instance]

        def run() -> None:
            server.lab.restart(server.server)
            deadline = time.monotonic() + 60
            while True:
                try:
                    with server.connect() as conn:
                        conn.execute("SELECT 1")
                    break
                except psycopg.OperationalError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            with self.lock:
                self.pending_restart.discard(instance)

        return Thread(run, name=f"restart {instance}")

    def backup(self, instance: str, backup_id: str) -> Thread:
        server = self.instances[instance]
        folder = self.backup_dir / instance / backup_id

        def run() -> None:
            folder.mkdir(parents=True, exist_ok=True)
            with server.connect() as conn:
                names = [
                    r["datname"]
                    for r in conn.execute(
                        "SELECT datname FROM pg_catalog.pg_database "
                        "WHERE datallowconn AND NOT datistemplate ORDER BY datname"
                    ).fetchall()
                ]
            files = []
            for index, db in enumerate(names):
                path = folder / f"{index:03d}.dump"
                _tool("pg_dump", "-Fc", "-f", str(path), dsn=server.dsn(db))
                files.append(path)
            with self.lock:
                self.backups[(instance, backup_id)] = files

        return Thread(run, name=f"backup {instance}")

    def series(self, metric: str) -> list[Json]:
        if metric not in (DMS_LAG_BYTES, DMS_LAG_SECONDS, CLOUDSQL_LAG_BYTES):
            return []
        visible_until = self.clock() - timedelta(seconds=self.delay)
        with self.lock:
            samples = [s for s in self.samples if s.at <= visible_until]
            runs = dict(self.runs)
        found: dict[tuple[str, ...], Json] = {}
        for sample in samples:
            run = runs[sample.job]
            value = sample.seconds if metric == DMS_LAG_SECONDS else sample.bytes
            if metric == CLOUDSQL_LAG_BYTES:
                # The destination's view: every database of the replica, its largest lag.
                instance = next(k for k, v in self.instances.items() if v == run.destination)
                project = run.job.split("/")[1]
                key: tuple[str, ...] = (instance,)
                resource = {
                    "type": CLOUDSQL_RESOURCE,
                    "labels": {"database_id": f"{project}:{instance}", "project_id": project},
                }
                labels: dict[str, str] = {}
            else:
                job_id = run.job.rsplit("/", 1)[-1]
                key = (job_id, sample.database)
                resource = {
                    "type": DMS_RESOURCE,
                    "labels": {"migration_job_id": job_id, "location": run.job.split("/")[3]},
                }
                labels = {"database": sample.database}
            series = found.setdefault(
                key,
                {
                    "metric": {"type": metric, "labels": labels},
                    "resource": resource,
                    "metricKind": "GAUGE",
                    "valueType": "INT64",
                    "points": {},
                },
            )
            stamp = sample.at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            series["points"][stamp] = max(series["points"].get(stamp, 0), value)
        for series in found.values():
            series["points"] = [
                {"interval": {"endTime": stamp}, "value": {"int64Value": str(value)}}
                for stamp, value in sorted(series["points"].items())
            ]
        return list(found.values())

    # -- the lag sampler

    def _start_sampler(self) -> None:
        if self._sampler is None:
            self._sampler = threading.Thread(target=self._sample_loop, name="lag", daemon=True)
            self._sampler.start()

    def _sample_loop(self) -> None:
        while not self._stop.is_set():
            with suppress(psycopg.Error):  # a server restarting: the next sample will tell
                self.sample()
            self._stop.wait(self.period)

    def sample(self) -> None:
        """Measure every running job's lag once (the sampler does it every `period`)."""
        with self.lock:
            runs = [r for r in self.runs.values() if not r.promoted and not r.ended]
        for run in runs:
            for db, slot in list(run.slots.items()):
                with run.source.connect(db) as conn:
                    row = conn.execute(
                        "SELECT pg_catalog.pg_current_wal_lsn() - '0/0'::pg_lsn AS now, "
                        "confirmed_flush_lsn - '0/0'::pg_lsn AS confirmed "
                        "FROM pg_catalog.pg_replication_slots WHERE slot_name = %s",
                        (slot,),
                    ).fetchone()
                if row is None or row["confirmed"] is None:
                    continue
                at = self.clock()
                current, confirmed = int(row["now"]), int(row["confirmed"])
                with self.lock:
                    history = self.positions.setdefault(f"{run.job}/{db}", [])
                    history.append((at, current))
                    # The oldest moment the source's WAL was past what the slot confirmed.
                    behind = next((t for t, lsn in history if lsn > confirmed), at)
                    seconds = int((at - behind).total_seconds())
                    self.samples.append(
                        Sample(at, run.job, db, max(0, current - confirmed), seconds)
                    )


def _has_pglogical(conn: Connection) -> bool:
    return (
        conn.execute("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = 'pglogical'").fetchone()
        is not None
    )


@contextmanager
def lab_standin(
    lab: Lab,
    *,
    project: str,
    instances: Mapping[str, str],
    backup_dir: Path,
    polls_to_done: int = 1,
    databases: Sequence[str] | None = None,
    delay: float = 60.0,
    period: float = 60.0,
    flags: Mapping[str, Mapping[str, str]] | None = None,
) -> Iterator[tuple[Standin, PglogicalJobs]]:
    """A stand-in whose instances (id -> lab server name) and jobs are the lab's servers.

    `flags` are the instances' databaseFlags to begin with, as recorded (the lab
    servers have wal_level=logical and pglogical loaded already): a source
    without `cloudsql.logical_decoding` and `cloudsql.enable_pglogical` on fails
    verify until they are patched on and the instance restarted. Yields the
    stand-in (not yet served: `standin.serve()`) and its backend.
    """
    jobs = PglogicalJobs(
        lab_instances(lab, instances),
        backup_dir=backup_dir,
        databases=databases,
        delay=delay,
        period=period,
    )
    standin = Standin(polls_to_done=polls_to_done, backend=jobs, instances=jobs)
    jobs.attach(standin)
    for instance in instances:
        initial = dict((flags or {}).get(instance, {}))
        standin.add_instance(project, instance, flags=initial)
        jobs.recorded[instance] = initial
    try:
        yield standin, jobs
    finally:
        jobs.close()
