"""The dms engine: Google's Database Migration Service moves a Cloud SQL database.

One continuous migration job carries every database of the move, between two
connection profiles (the source instance reached as the plan's source user;
the destination: the existing target instance, demoted to a replica first, or
a new instance DMS creates). DMS copies the schema and the rows itself and
then streams the changes with pglogical; the destination stays read-only
until the job is promoted.

Creates and deletes carry a requestId that is the same in every run of the
move, so a run that died after sending one makes nothing twice. verify,
demoteDestination, start and promote take no requestId: each is sent only
when the job (or the destination instance) reads as still needing it, so a
run that died after sending one neither sends it again nor skips it. Every
operation is polled with backoff; busy answers are retried by cutover.cloud.

The lag that counts is exact: what DMS's pglogical slots on the source
confirmed, against the source's current WAL. Cloud Monitoring's figures are
minutes old; `describe` shows them with their age, and nothing decides on them.
"""

import logging
import time
from collections.abc import Callable, Collection, Generator, Iterator, Sequence
from contextlib import closing, contextmanager
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

from cutover import wait
from cutover.cloud.client import ApiError, Call, Clients, NotFound, request_id
from cutover.cloud.datamigration import (
    DataMigration,
    existing_destination_profile_body,
    job_body,
    new_destination_profile_body,
    source_profile_body,
)
from cutover.cloud.monitoring import DMS_LAG_BYTES, DMS_LAG_SECONDS, DMS_RESOURCE, Monitoring
from cutover.cloud.resources import (
    LOGICAL_DECODING_FLAGS,
    Instance,
    JobPhase,
    JobState,
    MigrationJob,
    MigrationJobObject,
    ObjectPhase,
    ObjectState,
    Operation,
    ProfileState,
)
from cutover.cloud.sqladmin import SqlAdmin
from cutover.engines.base import Barrier, Engine, Traits
from cutover.errors import CutoverError, PreconditionFailed, StepFailed
from cutover.log import register_secret
from cutover.pg import barrier, catalog, pglogical, replication
from cutover.pg import dms as pgdms
from cutover.pg.connect import Connection, Pool
from cutover.plan import Dms, Plan, resolve_secret
from cutover.steps import Change
from cutover.types import Lag, MonitoredLag, ServiceState, SyncProgress, TableName, TableState

log = logging.getLogger(__name__)
_T = TypeVar("_T")

# DMS copies the schema; nothing may write the destination before the promotion; the
# sequences are copied by the switch right after it (DMS does not promise them).
TRAITS = Traits(
    copies_schema=True,
    target_read_only_until_promote=True,
    released_by_switch=False,
    source_settings_by_api=True,
    databases_apart=False,  # one job: its promotion is asked once, for every database
)
SOURCE_FLAGS = LOGICAL_DECODING_FLAGS  # the source's flags DMS needs; both restart it
RESTART_SECONDS = 1800.0

OPERATION_SECONDS = 1800.0  # a profile, a job, a verification or a demotion
PROMOTE_SECONDS = 900.0  # the promotion, and the job reading COMPLETED after it
DELETE_SECONDS = 900.0
HEARTBEAT_SECONDS = 1.0
MONITORED_WINDOW = timedelta(minutes=15)  # how far back a monitoring sample is looked for

STARTED = frozenset(
    {
        JobState.STARTING,
        JobState.RUNNING,
        JobState.COMPLETED,
        JobState.STOPPING,
        JobState.STOPPED,
        JobState.FAILED,
        JobState.RESTARTING,
        JobState.RESUMING,
    }
)
STREAMING_PHASES = frozenset({JobPhase.CDC, JobPhase.READY_FOR_PROMOTE})
NOT_APPLYING = frozenset({JobState.COMPLETED, JobState.STOPPED, JobState.FAILED})

_OBJECT_STATES = {
    ObjectPhase.FULL_DUMP: TableState.COPYING,
    ObjectPhase.CDC: TableState.READY,
    ObjectPhase.READY_FOR_PROMOTE: TableState.READY,
    ObjectPhase.PROMOTE_IN_PROGRESS: TableState.READY,
    ObjectPhase.PROMOTED: TableState.READY,
}
_JOB_STATES = {
    JobPhase.FULL_DUMP: TableState.COPYING,
    JobPhase.CDC: TableState.READY,
    JobPhase.READY_FOR_PROMOTE: TableState.READY,
    JobPhase.PROMOTE_IN_PROGRESS: TableState.READY,
}


def resource_id(move: str, suffix: str = "") -> str:
    """A DMS resource ID of the move: a-z, 0-9 and -, as DMS takes them."""
    return "cutover-" + move.replace("_", "-") + (f"-{suffix}" if suffix else "")


class DmsEngine:
    """The Engine of a move that one DMS migration job carries."""

    kind = "dms"
    traits = TRAITS

    def __init__(self, plan: Plan, pool: Pool, settings: Dms, clients: Clients) -> None:
        self._plan = plan
        self._pool = pool
        self._settings = settings
        self._clients = clients
        self._dms = DataMigration.for_plan(clients, settings)
        self._sql = SqlAdmin(clients, project=settings.project)
        self._monitoring = Monitoring(clients, project=settings.project)
        self._one_way = plan.ledger_move != plan.move  # the reversed plan of a fallback
        self.job_id = resource_id(plan.move)
        self.source_profile_id = resource_id(plan.move, "source")
        self.destination_profile_id = resource_id(plan.move, "destination")
        self._last_heartbeat = 0.0
        self._held: dict[object, Any] | None = None  # within `reading`: answers read once

    # -- the job and its calls ---------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[None]:
        """Within: the job, its objects and Monitoring's series are read once, for every
        database and every fact (a failed read too: it fails each asker at once)."""
        self._held = {}
        try:
            yield
        finally:
            self._held = None

    def _once(self, key: object, read: Callable[[], _T]) -> _T:
        """What `read` answers, asked only once for `key` within a reading."""
        if self._held is None:
            return read()
        if key not in self._held:
            try:
                self._held[key] = read()
            except CutoverError as exc:
                self._held[key] = exc
        answer = self._held[key]
        if isinstance(answer, CutoverError):
            raise answer
        return answer  # type: ignore[no-any-return]

    def _request_id(self, what: str) -> str:
        return request_id(self._plan.ledger_move, f"dms.{what}")

    def job(self) -> MigrationJob | None:
        """The move's migration job as DMS reads now (None: there is none)."""
        return self._once("job", lambda: self._dms.job(self.job_id))

    def _send(
        self, call: Call[Operation], *, what: str, timeout: float, dry_run: bool
    ) -> list[Change]:
        """Send a call and wait for its operation; a refusal says where the job stands."""
        try:
            return list(self._clients.run(call, timeout=timeout, what=what, dry_run=dry_run))
        except ApiError as exc:
            if exc.code != "FAILED_PRECONDITION":
                raise
            job = self._quiet(self.job)
            now = "does not exist" if job is None else f"is {job.state}/{job.phase}"
            raise StepFailed(
                f"DMS refused {what}: {exc.message}",
                hint=f"the migration job {self.job_id} {now}; `cutover status` shows where "
                "it stands: run the command again once it allows this (a FAILED job needs "
                "its error fixed; DMS's restart would copy everything anew)",
            ) from None

    def _quiet(self, read: Callable[[], MigrationJob | None]) -> MigrationJob | None:
        try:
            return read()
        except CutoverError:
            return None

    def _wait_for_job(
        self,
        probe: Callable[[MigrationJob], bool],
        *,
        timeout: float | wait.Deadline,
        what: str,
        on_tick: Callable[[], None] | None = None,
    ) -> MigrationJob:
        """Read the job, less and less often, until `probe` holds; StepFailed if it fails."""

        def read() -> MigrationJob | None:
            job = self.job()
            if job is None:
                raise StepFailed(
                    f"the migration job {self.job_id} disappeared",
                    hint="someone deleted it; run the command again to make it anew",
                )
            if job.state is JobState.FAILED:
                raise StepFailed(
                    f"the migration job {self.job_id} failed: {job.error or 'no reason given'}",
                    hint="fix the cause Google names (often the source's settings or grants), "
                    "then run `cutover start --recopy`: DMS copies everything anew",
                )
            return job if probe(job) else None

        polling = self._clients.polling  # the job is read as often as an operation is
        return wait.until(
            read,
            timeout=timeout,
            what=what,
            hint="the job goes on in DMS: run the command again to keep waiting",
            interval=polling.interval,
            backoff=polling.backoff,
            max_interval=polling.max_interval,
            on_tick=on_tick,
        )

    def _ensure_profiles(self, *, timeout: float, dry_run: bool) -> list[Change]:
        changes: list[Change] = []
        wanted = (
            (self.source_profile_id, "create_source_profile", self._source_profile_body),
            (self.destination_profile_id, "create_destination_profile", self._destination_body),
        )
        for profile_id, step, body in wanted:
            profile = self._dms.profile(profile_id)
            if profile is not None and profile.state is ProfileState.FAILED:
                raise StepFailed(
                    f"the connection profile {profile_id} failed: {profile.error}",
                    hint="fix its cause, delete the profile (`cutover cleanup`), run start again",
                )
            if profile is not None and profile.state is ProfileState.READY:
                continue
            # Missing, or still being made by a run that died: the same requestId again,
            # answered with the first request's operation.
            call = self._dms.create_profile(profile_id, body(), request_id=self._request_id(step))
            changes += self._send(
                call,
                what=f"creating the connection profile {profile_id}",
                timeout=timeout,
                dry_run=dry_run,
            )
        return changes

    def _source_profile_body(self) -> dict[str, object]:
        source = self._plan.source
        password = ""
        if source.password is not None:
            password = resolve_secret(source.password, where="source.password")
            register_secret(password)
        return source_profile_body(
            instance=self._settings.source_instance,
            host=source.peer_host,
            port=source.replication_port or source.port,
            username=source.user,
            password=password,
        )

    def _destination_body(self) -> dict[str, object]:
        settings = self._settings
        if settings.new_target is None:
            return existing_destination_profile_body(instance=settings.target_instance)
        root = settings.new_target.root_password
        password = None if root is None else resolve_secret(root, where="dms.new_target")
        if password is not None:
            register_secret(password)
        body = new_destination_profile_body(
            settings=settings.new_target,
            source_profile=self._dms.profile_name(self.source_profile_id),
            root_password=password,
            network=settings.network,
        )
        body["displayName"] = settings.target_instance
        return body

    def _ensure_job(self, *, timeout: float, dry_run: bool) -> list[Change]:
        """Profiles, then the job, each created once; the job as it reads afterwards."""
        changes = self._ensure_profiles(timeout=timeout, dry_run=dry_run)
        job = self.job()
        if job is None or job.state in (JobState.CREATING, JobState.DRAFT):
            body = job_body(
                source_profile=self._dms.profile_name(self.source_profile_id),
                destination_profile=self._dms.profile_name(self.destination_profile_id),
                connectivity=self._settings.connectivity,
                network=self._settings.network,
                display_name=f"cutover {self._plan.move}",
                databases=self._plan.databases,  # the move's, not every one of the source
            )
            call = self._dms.create_job(
                self.job_id, body, request_id=self._request_id("create_job")
            )
            changes += self._send(
                call,
                what=f"creating the migration job {self.job_id}",
                timeout=timeout,
                dry_run=dry_run,
            )
        return changes

    def _destination_demoted(self) -> bool:
        """The existing target instance replicates from the source (DMS demoted it)."""
        instance = self._sql.instance(self._settings.target_instance)
        return instance is not None and (
            bool(instance.master_instance_name) or instance.instance_type == "READ_REPLICA_INSTANCE"
        )

    def start_job(self, *, timeout: float | wait.Deadline, dry_run: bool) -> list[Change]:
        """Profiles and job made, verified, the destination demoted, started: each once."""
        seconds = timeout.remaining() if isinstance(timeout, wait.Deadline) else timeout
        changes = self._ensure_job(timeout=seconds, dry_run=dry_run)
        job = self.job()
        fresh = job is None or job.state in (
            JobState.NOT_STARTED,
            JobState.CREATING,
            JobState.DRAFT,
        )
        if job is not None and job.state is JobState.FAILED:
            raise StepFailed(
                f"the migration job {self.job_id} failed: {job.error or 'no reason given'}",
                hint="fix the cause Google names, then run `cutover start --recopy`",
            )
        if not fresh:
            return changes  # started by an earlier run: neither verified nor started again
        existing = self._settings.new_target is None
        demoted = existing and job is not None and self._destination_demoted()
        if not demoted:
            # verify changes nothing; a demoted destination shows that it passed before.
            changes += self._send(
                self._dms.verify_job(self.job_id),
                what=f"verifying the migration job {self.job_id}",
                timeout=seconds,
                dry_run=dry_run,
            )
        if existing and not demoted:
            changes += self._send(
                self._dms.demote_destination(self.job_id),
                what=f"demoting {self._settings.target_instance} to a replica of the source",
                timeout=seconds,
                dry_run=dry_run,
            )
        changes += self._send(
            self._dms.start_job(self.job_id),
            what=f"starting the migration job {self.job_id}",
            timeout=seconds,
            dry_run=dry_run,
        )
        return changes

    # -- prepare: DMS makes its own pglogical node, set and slot on the source -----------------

    def _source(self, db: str) -> Connection:
        return self._pool.get("source", db)

    def _target(self, db: str) -> Connection:
        return self._pool.get("target", db)

    # -- prepare: the source instance's flags ---------------------------------------------------

    def _source_instance(self) -> Instance:
        return self._sql.existing(self._settings.source_instance, key="dms.source_instance")

    def source_decodes(self) -> bool:
        """Both flags are on, and the source runs with them (the restart is done)."""
        flags = {f.name: f.value for f in self._source_instance().flags}
        if any(flags.get(name) != value for name, value in SOURCE_FLAGS.items()):
            return False
        return pgdms.decodes_with_pglogical(self._pool.get("source"))

    def enable_decoding(self, *, restart: bool, dry_run: bool) -> Sequence[Change]:
        """The flags set by a read-merge-write of the whole list, then the instance restarted.

        Cloud SQL's instances.patch replaces the flag list: the list is read just
        before and only these two flags change. Setting them restarts the instance,
        so nothing is sent without `restart`; a dry run shows both calls.
        """
        instance = self._source_instance()
        patch = self._sql.patch_flags(instance, SOURCE_FLAGS)
        reboot = self._sql.restart(instance.name)
        shown = [Change("cloudsql", c.render()) for c in ([patch] if patch else []) + [reboot]]
        if dry_run:
            return shown
        if not restart:
            raise PreconditionFailed(
                f"the source instance {instance.name} needs the flags "
                + ", ".join(f"{k}={v}" for k, v in SOURCE_FLAGS.items())
                + " and a restart to take them: a minute or more without the database",
                hint="run `cutover prepare --restart` at a quiet moment "
                "(`--dry-run --restart` shows the calls first)",
            )
        if patch is not None:
            self._send(
                patch, what="setting the source's flags", timeout=RESTART_SECONDS, dry_run=False
            )
        self._pool.close()  # the restart ends every session
        self._send(reboot, what="restarting the source", timeout=RESTART_SECONDS, dry_run=False)
        wait.until(
            self._quietly_decodes,
            timeout=RESTART_SECONDS,
            interval=1.0,
            what=f"the source instance {instance.name} did not come back decoding",
            hint="look at the instance in the console; run prepare again once it runs",
        )
        return shown

    def _quietly_decodes(self) -> bool:
        try:
            return pgdms.decodes_with_pglogical(self._pool.get("source"))
        except CutoverError:
            self._pool.close()
            return False

    def _source_databases(
        self, *, but: Collection[str] = ()
    ) -> Generator[tuple[str, Connection], None, None]:
        """Each database of the source instance (templates aside, and `but`), on a connection
        of its own closed before the next: an instance may hold many databases."""
        for name in catalog.database_names(self._pool.get("source")):
            if name in but:
                continue
            conn = self._pool.open("source", name)
            try:
                yield name, conn
            finally:
                conn.close()

    def installed(self, db: str) -> bool:
        """pglogical is in every database of the source instance, `postgres` too: DMS needs
        it in each one, not only in those it migrates."""
        with closing(self._source_databases()) as each:  # a connection left open: closed
            return all(pglogical.extension_installed(conn) for _, conn in each)

    def install(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """CREATE EXTENSION pglogical in `db` and in every other database of the source
        instance that lacks it, each marked as this move's."""
        changes = pglogical.create_extension(
            self._source(db), self._plan.move, where=f"source/{db}", dry_run=dry_run
        )
        for name, conn in self._source_databases(but=[db]):
            if not pglogical.extension_installed(conn):
                changes += pglogical.create_extension(
                    conn, self._plan.move, where=f"source/{name}", dry_run=dry_run
                )
        return changes

    def access_granted(self, db: str) -> bool:
        """True: DMS connects as the plan's source user, named in the source profile;
        `cutover check` says what that user lacks."""
        return True

    def grant_access(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """Nothing: no role of the move's own is made for DMS."""
        return []

    def source_prepared(self, db: str) -> bool:
        """True: DMS makes its pglogical node and replication set itself when the job starts."""
        return True

    def prepare_source(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """Nothing: see source_prepared."""
        return []

    # -- initial sync and stream ---------------------------------------------------------------

    def initial_sync_started(self, db: str) -> bool:
        """The job has been started (it copies by itself from then on)."""
        job = self.job()
        return job is not None and job.state in STARTED

    def initial_sync(
        self,
        db: str,
        *,
        jobs: int,
        deadline: float,
        on_progress: Callable[[SyncProgress], None],
        dry_run: bool,
    ) -> Sequence[Change]:
        """Start the move's job (once for every database), then wait for its full dump.

        The dump runs in DMS: a controller that dies leaves it going, and the next
        start finds the job started and only waits.
        """
        until = wait.Deadline(at=deadline, seconds=max(0.0, deadline - time.monotonic()))
        changes = self.start_job(timeout=until, dry_run=dry_run)
        if dry_run:
            return changes
        self._wait_for_job(
            lambda job: job.state is JobState.RUNNING and job.phase in STREAMING_PHASES,
            timeout=until,
            what=f"the full dump of the migration job {self.job_id} did not finish",
            on_tick=lambda: on_progress(self.progress(db)),
        )
        on_progress(self.progress(db))
        return changes

    def streaming(self, db: str) -> bool:
        """The job runs and streams changes (its full dump is done)."""
        job = self.job()
        return job is not None and job.state is JobState.RUNNING and job.phase in STREAMING_PHASES

    def stream(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """Nothing to send: a running job streams after its dump; anything else is reported."""
        job = self.job()
        if job is not None and job.state in (JobState.RUNNING, JobState.STARTING):
            return []
        now = "does not exist" if job is None else f"is {job.state}/{job.phase}"
        raise StepFailed(
            f"the migration job {self.job_id} {now}: it does not stream",
            hint="`cutover status` shows why; a stopped job is resumed in the console (DMS's "
            "resume), a failed one copied anew with `cutover start --recopy`",
        )

    def _objects(self) -> list[MigrationJobObject]:
        def read() -> list[MigrationJobObject]:
            try:
                return self._dms.job_objects(self.job_id)
            except NotFound:
                return []

        return self._once("objects", read)

    def progress(self, db: str) -> SyncProgress:
        """Each table's state from the job's objects (per table, or the database's own)."""
        source = self._source(db)
        tables = [(t.schema, t.name) for t in replication.replicated_tables(source)]
        sizes = replication.table_sizes(source, tables)
        job = self.job()
        states = dict.fromkeys((TableName(*t) for t in tables), TableState.QUEUED)
        if job is not None and job.state in STARTED:
            whole = _JOB_STATES.get(job.phase, TableState.UNKNOWN)
            mine = [o for o in self._objects() if o.database in ("", db)]
            for obj in mine:
                if not obj.table:  # the database itself: every table is where it is
                    whole = _object_state(obj, whole)
            per_table = {(o.schema or "public", o.table): o for o in mine if o.table}
            states = {
                t: _object_state(per_table[t], whole) if t in per_table else whole for t in states
            }
        done = sum(sizes.get(t, 0) for t, s in states.items() if s.is_ready)
        return SyncProgress(
            {replication.display(t): s for t, s in states.items()},
            bytes_total=sum(sizes.values()),
            bytes_done=done,
        )

    def _slots(self, db: str) -> dict[str, replication.SlotState]:
        return replication.slot_states(self._source(db), pgdms.PGLOGICAL_SLOTS)

    def lag(self, db: str) -> Lag | None:
        """The exact lag: the furthest behind of DMS's slots for this database on the source."""
        slots = self._slots(db)
        if not slots:
            return None
        worst = max(slots.values(), key=lambda s: s.lag_bytes)
        return Lag(
            bytes=worst.lag_bytes,
            seconds=worst.lag_seconds,
            connected=all(s.active for s in slots.values()),
            retained_bytes=max(s.retained_bytes for s in slots.values()),
            safe_bytes=worst.safe_wal_size,
            retention=worst.wal_status,
        )

    def monitored_lag(self, db: str, *, now: datetime | None = None) -> MonitoredLag | None:
        """Cloud Monitoring's newest lag sample for the job (this database's, if labelled)."""
        end = now or datetime.now(UTC)
        figures: dict[str, tuple[float, datetime]] = {}
        for metric in (DMS_LAG_SECONDS, DMS_LAG_BYTES):
            every = self._once(
                metric,
                partial(
                    self._monitoring.series,
                    metric,
                    start=end - MONITORED_WINDOW,
                    end=end,
                    resource=DMS_RESOURCE,
                    labels={"migration_job_id": self.job_id},
                ),
            )
            for series in every:
                if series.metric_labels.get("database", db) != db or not series.points:
                    continue
                newest = series.points[0]
                if metric not in figures or newest.end_time > figures[metric][1]:
                    figures[metric] = (newest.value, newest.end_time)
        if not figures:
            return None
        seconds, by_bytes = figures.get(DMS_LAG_SECONDS), figures.get(DMS_LAG_BYTES)
        return MonitoredLag(
            seconds=None if seconds is None else seconds[0],
            bytes=None if by_bytes is None else int(by_bytes[0]),
            sampled_at=max(at for _, at in figures.values()).timestamp(),
        )

    def service_state(self, db: str) -> ServiceState | None:
        """The job's state and phase as DMS reads now (None: no job yet)."""
        job = self.job()
        return None if job is None else ServiceState(str(job.state), str(job.phase))

    def apply_errors(self, db: str) -> int:
        """0: DMS counts no errors; a failing job shows as FAILED (apply_stopped)."""
        return 0

    def apply_stopped(self, db: str) -> bool:
        """The job is stopped or failed: nothing is applied."""
        job = self.job()
        return job is not None and job.state in (JobState.STOPPED, JobState.FAILED)

    def describe(self, db: str) -> str | None:
        """The job's state and phase, and Monitoring's lag with the age of its sample."""
        try:
            job = self.job()
        except CutoverError as exc:
            return f"DMS job {self.job_id}: not read ({exc.message})"
        if job is None:
            return None
        said = f"DMS job {self.job_id} {job.state}/{job.phase}"
        if job.error is not None:
            said += f", error: {job.error}"
        try:
            sample = self.monitored_lag(db)
        except CutoverError:
            return said + "; monitored lag: not read"
        if sample is None:
            return said + "; monitored lag: no sample yet"
        figures = []
        if sample.seconds is not None:
            figures.append(f"{sample.seconds:g} s")
        if sample.bytes is not None:
            figures.append(f"{sample.bytes} B")
        age = sample.age()
        return said + f"; monitored lag {', '.join(figures)} ({age:.0f} s old)"

    def heartbeat(self, db: str) -> None:
        """At most one small commit a second on the source, so the slots confirm."""
        now = time.monotonic()
        if now - self._last_heartbeat >= HEARTBEAT_SECONDS:
            pglogical.heartbeat(self._source(db), self._plan.move)
            self._last_heartbeat = now

    def resume_apply(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """Nothing: DMS restarts its own workers; a failed job is never restarted by itself
        (DMS's restart empties the destination)."""
        return []

    def carry(self, db: str, tables: Sequence[TableName], *, dry_run: bool) -> Sequence[Change]:
        """DMS carries no table made after its job started: refused, with what to do."""
        raise PreconditionFailed(
            f"{db}: DMS does not carry tables made after its job started "
            f"({', '.join(str(t) for t in tables)})",
            hint="add them to DMS's replication set on the source with "
            "pglogical.replication_set_add_table, or copy the move anew (`cutover start "
            "--recopy`)",
        )

    # -- switch --------------------------------------------------------------------------------

    def ready_to_switch(self, db: str) -> bool:
        """True: nothing to prepare; the barrier is read on the destination replica."""
        return True

    def prepare_switch(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """Nothing to prepare."""
        return []

    def write_barrier(self, db: str, token: str) -> Barrier:
        """Commit the marker on the source (DMS carries `_cutover.barrier` like any table)."""
        return Barrier(token, barrier.write_marker(self._source(db), self._plan.move, token))

    def barrier_reached(self, db: str, marker: Barrier) -> bool:
        """The destination replica shows the marker: every commit before it is applied.

        It takes no write before the promotion, so no flush is asked of it; DMS's
        promotion ends the replica with what it applied.
        """
        return barrier.marker_arrived(self._target(db), marker.token)

    def _ownership_given_back(self, db: str) -> bool:
        return not pgdms.owned_by(self._target(db), pgdms.EXTERNAL_SYNC)

    def promoted(self, db: str) -> bool:
        """The job is COMPLETED (or was, and is deleted) and DMS's ownership is given back."""
        if pgdms.marked_promoted(self._target(db), self._plan.move):
            return True
        job = self.job()
        return (
            job is not None and job.state is JobState.COMPLETED and self._ownership_given_back(db)
        )

    def promote(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """Promote the job (once for every database) and wait until it is COMPLETED; then
        what the source grants is granted here too, and each object DMS left to
        cloudsqlexternalsync goes back to its owner on the source."""
        changes: list[Change] = []
        job = self.job()
        if job is None:
            raise StepFailed(
                f"the migration job {self.job_id} does not exist: nothing to promote",
                hint="`cutover status` shows the move; start it again if it was deleted",
            )
        if job.state is not JobState.COMPLETED:
            if job.phase is not JobPhase.PROMOTE_IN_PROGRESS:  # else: sent by a run that died
                changes += self._send(
                    self._dms.promote_job(self.job_id),
                    what=f"promoting the migration job {self.job_id}",
                    timeout=PROMOTE_SECONDS,
                    dry_run=dry_run,
                )
            if not dry_run:
                self._wait_for_job(
                    lambda j: j.state is JobState.COMPLETED,
                    timeout=PROMOTE_SECONDS,
                    what=f"the migration job {self.job_id} did not read COMPLETED",
                )
                # Sessions opened while the replica was read-only stay so: open new ones.
                self._pool.discard("target")
        where = f"target/{db}"
        if dry_run and job.state is not JobState.COMPLETED:
            return [
                *changes,
                Change(where, "GRANT what the source grants on its schemas and relations"),
                Change(where, "GRANT USAGE ON SCHEMA pglogical TO PUBLIC, where DMS left it"),
                Change(
                    where,
                    "each object cloudsqlexternalsync owns: ALTER ... "
                    "OWNER TO its owner on the source",
                ),
            ]
        # Grants first: the ownership given back is what promoted() reads as done.
        changes += pgdms.copy_grants(
            self._source(db), self._target(db), where=where, dry_run=dry_run
        )
        # DMS's pglogical stays on the destination until cleanup, its schema closed: the
        # application's first DROP TABLE (or REFRESH ... CONCURRENTLY) would fail on it.
        if pglogical.extension_installed(self._target(db)):
            changes.append(pglogical.open_schema(self._target(db), where=where, dry_run=dry_run))
        changes += pgdms.give_back_ownership(
            self._source(db),
            self._target(db),
            holder=pgdms.EXTERNAL_SYNC,
            fallback=self._plan.target.user,
            where=where,
            dry_run=dry_run,
        )
        changes.append(
            pgdms.mark_promoted(self._target(db), self._plan.move, where=where, dry_run=dry_run)
        )
        return changes

    # -- fallback: DMS replicates one way ---------------------------------------------------

    def fallback_running(self, db: str) -> bool:
        """False: DMS has no job from the promoted destination back to this source."""
        return False

    def start_fallback(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """Refused: `switch --keep-fallback` is refused before anything stops (preflight)."""
        raise PreconditionFailed(
            "the dms engine replicates one way: there is no fallback to start",
            hint="switch without --keep-fallback",
        )

    # -- cleanup -------------------------------------------------------------------------------

    def stopped(self, db: str) -> bool:
        """Nothing is applied: no job, or it is promoted, stopped or failed."""
        if self._one_way:
            return True
        job = self.job()
        return job is None or job.state in NOT_APPLYING

    def stop(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """Stop a job that still runs (a move abandoned before its switch); once for all."""
        job = None if self._one_way else self.job()
        if job is None or job.state in NOT_APPLYING:
            return []
        changes: list[Change] = []
        if job.state is not JobState.STOPPING:
            changes += self._send(
                self._dms.stop_job(self.job_id),
                what=f"stopping the migration job {self.job_id}",
                timeout=OPERATION_SECONDS,
                dry_run=dry_run,
            )
        if not dry_run:
            self._wait_for_job(
                lambda j: j.state in NOT_APPLYING,
                timeout=OPERATION_SECONDS,
                what=f"the migration job {self.job_id} did not stop",
            )
        return changes

    def source_released(self, db: str) -> bool:
        """No job, and no slot of DMS's left in this database on the source."""
        if self._one_way:
            return True
        return self.job() is None and not self._slots(db)

    def release_source(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """Delete the job (never with force: after a promotion it would delete the
        destination), then drop the slots DMS left on the source."""
        if self._one_way:
            return []
        changes: list[Change] = []
        job = self.job()
        if job is not None:
            if job.state not in NOT_APPLYING | {JobState.NOT_STARTED, JobState.DELETING}:
                changes += self.stop(db, dry_run=dry_run)
            call = self._dms.delete_job(self.job_id, request_id=self._request_id("delete_job"))
            changes += self._send(
                call,
                what=f"deleting the migration job {self.job_id}",
                timeout=DELETE_SECONDS,
                dry_run=dry_run,
            )
        source = self._source(db)
        for slot in self._slots(db):
            changes += replication.drop_slot(source, slot, where="source", dry_run=dry_run)
        return changes

    def _profiles(self) -> list[str]:
        return [
            p
            for p in (self.source_profile_id, self.destination_profile_id)
            if self._dms.profile(p) is not None
        ]

    def source_unprepared(self, db: str) -> bool:
        """Neither connection profile is left (the destination's goes with the job)."""
        return self._one_way or not self._profiles()

    def unprepare_source(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """Delete the connection profiles (once the job is gone), once for every database."""
        if self._one_way:
            return []
        changes: list[Change] = []
        for profile_id in self._profiles():
            step = (
                "delete_source_profile"
                if profile_id == self.source_profile_id
                else ("delete_destination_profile")
            )
            call = self._dms.delete_profile(profile_id, request_id=self._request_id(step))
            changes += self._send(
                call,
                what=f"deleting the connection profile {profile_id}",
                timeout=DELETE_SECONDS,
                dry_run=dry_run,
            )
        return changes

    def access_revoked(self) -> bool:
        """True: grant_access made nothing."""
        return True

    def revoke_access(self, *, dry_run: bool) -> Sequence[Change]:
        """Nothing: see access_revoked."""
        return []

    def _leftovers(self, db: str) -> list[tuple[Connection, str, str | None, bool]]:
        """Each side: its connection, where, its pglogical node, whether to drop the extension.

        The source's extension goes only where this move created it; the target's
        database is DMS's own (it made it), so pglogical there is DMS's too.
        """
        found = []
        for side in ("source", "target"):
            if db not in catalog.existing_databases(self._pool.get(side), [db]):
                continue  # DMS makes the target's database: nothing there before it ran
            conn = self._pool.get(side, db)
            node = pglogical.local_node(conn)
            if side == "source":
                drop = pglogical.extension_ours(conn, self._plan.move)
            else:
                drop = pglogical.extension_installed(conn)
            found.append((conn, f"{side}/{db}", None if node is None else node.name, drop))
        return found

    def _ours_elsewhere(self) -> Generator[tuple[str, Connection], None, None]:
        """The source's databases outside the move (`postgres`, ...) where prepare created
        pglogical for DMS and no node of DMS's is left, each on its own connection."""
        for name, conn in self._source_databases(but=self._plan.databases):
            if pglogical.extension_ours(conn, self._plan.move) and not pglogical.local_node(conn):
                yield name, conn

    def uninstalled(self, db: str) -> bool:
        """No pglogical node is left on either side, nor an extension this move brought."""
        if self._one_way:
            return True
        if any(node or drop for _, _, node, drop in self._leftovers(db)):
            return False
        with closing(self._ours_elsewhere()) as elsewhere:  # its connection closed at once
            return next(elsewhere, None) is None

    def uninstall(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """Drop the pglogical nodes DMS left, then the extensions this move brought.

        Runs after the job is deleted: no subscription of DMS's uses a node any more.
        """
        if self._one_way:
            return []
        changes: list[Change] = []
        for conn, where, node, drop in self._leftovers(db):
            if node is not None:
                changes.append(pglogical.drop_node(conn, node, where=where, dry_run=dry_run))
            if drop:
                changes += pglogical.drop_extension(conn, where=where, dry_run=dry_run)
        for name, conn in self._ours_elsewhere():  # what prepare made for DMS outside the move
            changes += pglogical.drop_extension(conn, where=f"source/{name}", dry_run=dry_run)
        return changes


def _object_state(obj: MigrationJobObject, otherwise: TableState) -> TableState:
    if obj.state is ObjectState.FAILED:
        return TableState.UNKNOWN
    if obj.state is ObjectState.NOT_STARTED:
        return TableState.QUEUED
    return _OBJECT_STATES.get(obj.phase, otherwise)


def build(plan: Plan, pool: Pool, *, clients: Clients | None = None) -> Engine:
    """The engine of a move; `clients` (tests) replaces the ones the plan's dms section makes."""
    settings = plan.dms
    if settings is None:
        raise PreconditionFailed(
            "engine: dms needs the plan's dms section", hint="see docs/plan.md"
        )
    return DmsEngine(plan, pool, settings, clients or Clients.from_plan(settings))
