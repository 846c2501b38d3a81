"""A stand-in for Google's DMS, Cloud SQL Admin and Monitoring APIs, for tests of cutover.cloud.

One threaded HTTP server on a loopback port answers the REST paths of
datamigration v1, sqladmin v1 and monitoring v3 that cutover calls, in the
shapes of their discovery documents, so the real google-api-python-client
talks to it through `api_endpoint`. What it keeps is in memory:

- long-running operations that are done after `polls_to_done` reads of the
  operation (0: done at once); a change takes effect when its operation is done;
- migration jobs that move through the states and phases of the discovery
  document (CREATING -> NOT_STARTED -> STARTING -> RUNNING/FULL_DUMP -> CDC ->
  PROMOTE_IN_PROGRESS -> COMPLETED, STOPPING -> STOPPED, DELETING), and refuse
  a call their state does not allow with 400 FAILED_PRECONDITION;
- requestId idempotency: a create or delete sent again with the same
  requestId answers the first request's operation and makes nothing twice;
- Cloud SQL instances whose patch replaces settings.databaseFlags whole (as
  Cloud SQL does), and that answer 409 while another operation runs on them;
- time series for Monitoring's timeSeries.list;
- faults: the next N requests that match a method and a path answer an error;
- kills: the caller of the next request that matches a method and a path is
  killed (SIGKILL) once the stand-in has done what it asked, before the answer
  leaves: a controller that dies in the middle of an API call. Its operation
  is done already, or (`running`) left for the next run to poll.

What a migration job does is a `JobBackend`: the in-memory one counts reads
of the job to end the full dump; a backend that runs real replication between
lab servers can take its place (the hooks are called on create, verify,
start, each read while running, promote and delete). What an instance does is
an optional `InstanceBackend` (tests/gcp/backend.py puts lab servers behind
instances: flags, restarts, backups and the lag series are then real); an
operation whose work runs in the world is done only once that work is.
"""

import itertools
import json
import os
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import parse_qs, parse_qsl, urlsplit

from tests.gcp.cloudsql import LOGIN_SCOPE, TOKEN_PATH, Instances

Json = dict[str, Any]

RPC_STATUS = {
    400: "INVALID_ARGUMENT",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "NOT_FOUND",
    409: "ABORTED",
    429: "RESOURCE_EXHAUSTED",
    500: "INTERNAL",
    503: "UNAVAILABLE",
}
RPC_NUMBER = {"INVALID_ARGUMENT": 3, "FAILED_PRECONDITION": 9, "NOT_FOUND": 5, "INTERNAL": 13}


class ApiFailure(Exception):
    """An error answer: HTTP status, google.rpc status name, message."""

    def __init__(self, status: int, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or RPC_STATUS.get(status, "UNKNOWN")
        self.message = message

    def body(self) -> Json:
        error: Json = {"code": self.status, "message": self.message, "status": self.code}
        if self.code == "ABORTED":  # Cloud SQL's shape of "another operation is in progress"
            error["errors"] = [{"reason": "operationInProgress", "message": self.message}]
        return {"error": error}


@dataclass
class Request:
    """One request the stand-in received."""

    method: str
    path: str
    query: dict[str, str]
    body: Json | None


@dataclass
class Fault:
    """The next `times` requests matching `method` and `path` (a regex) answer `status`."""

    status: int
    times: int
    method: str | None
    path: str
    code: str | None = None


@dataclass
class Kill:
    """The caller of the next request matching `method` and `target` (a regex searched in
    the path and query) dies before its answer; `running`: its operation is left running."""

    method: str
    target: str
    running: bool = False


@dataclass
class Op:
    """A long-running operation: done after `polls_left` reads; `finish` applies its effect."""

    name: str
    api: str  # datamigration | sqladmin
    polls_left: int
    finish: Callable[[], str | None]  # returns an error message, or None
    target: str
    verb: str
    done: bool = False
    error: str | None = None
    extra: Json = field(default_factory=dict)  # Cloud SQL: backupContext
    work: "Work | None" = None  # what runs in the world: the operation waits for it


class Work(Protocol):
    """Something an operation started in the world (a restart, a dump)."""

    def finished(self) -> bool: ...

    def error(self) -> str | None:
        """An error message once finished, else None."""
        ...


class JobBackend(Protocol):
    """What a migration job does in the world; the stand-in keeps its state and phase."""

    def created(self, job: Json) -> None: ...

    def verify(self, job: Json) -> str | None:
        """An error message when the job could not run, else None."""
        ...

    def started(self, job: Json) -> None: ...

    def phase(self, job: Json) -> str:
        """The phase of a running job, asked at each read (FULL_DUMP, then CDC)."""
        ...

    def stopped(self, job: Json) -> None: ...

    def promoted(self, job: Json) -> None: ...

    def deleted(self, job: Json) -> None: ...

    def databases(self, job: Json) -> list[str] | None:
        """The job's databases (its objects), or None for the stand-in's own list."""
        ...


class InstanceBackend(Protocol):
    """What a Cloud SQL instance does in the world, for the instances it serves."""

    def serves(self, instance: str) -> bool: ...

    def set_flags(self, instance: str, flags: list[Json]) -> str | None:
        """Apply the whole list of databaseFlags; an error message, or None."""
        ...

    def restart(self, instance: str) -> Work: ...

    def backup(self, instance: str, backup_id: str) -> Work: ...

    def series(self, metric: str) -> list[Json]:
        """The time series of a metric this backend measures (points as timeSeries.list)."""
        ...


@dataclass
class InMemoryJobs:
    """A job whose full dump lasts `dump_reads` reads of the job, then replicates forever."""

    dump_reads: int = 1
    verify_error: str | None = None
    reads: dict[str, int] = field(default_factory=dict)
    events: list[tuple[str, str]] = field(default_factory=list)  # (hook, job name)

    def created(self, job: Json) -> None:
        self.events.append(("created", job["name"]))

    def verify(self, job: Json) -> str | None:
        self.events.append(("verify", job["name"]))
        return self.verify_error

    def started(self, job: Json) -> None:
        self.events.append(("started", job["name"]))
        self.reads[job["name"]] = 0

    def phase(self, job: Json) -> str:
        count = self.reads.get(job["name"], 0) + 1
        self.reads[job["name"]] = count
        return "CDC" if count > self.dump_reads else "FULL_DUMP"

    def stopped(self, job: Json) -> None:
        self.events.append(("stopped", job["name"]))

    def promoted(self, job: Json) -> None:
        self.events.append(("promoted", job["name"]))

    def deleted(self, job: Json) -> None:
        self.events.append(("deleted", job["name"]))

    def databases(self, job: Json) -> list[str] | None:
        return None


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _merge(into: Json, patch: Json) -> None:
    """A patch's merge: nested messages merge, lists and scalars replace."""
    for key, value in patch.items():
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value)
        else:
            into[key] = json.loads(json.dumps(value))


_LOCATION = r"/v1/projects/(?P<project>[^/]+)/locations/(?P<location>[^/]+)"
_SQL = r"/v1/projects/(?P<project>[^/]+)"
# The Cloud SQL connector calls its own path: `{sqladmin endpoint}/sql/v1beta4/projects/...`.
_CONNECT = r"/sql/v1beta4/projects/(?P<project>[^/]+)"
_FILTER_CLAUSE = re.compile(r'([\w.]+)\s*=\s*"((?:[^"\\]|\\.)*)"')


class Standin:
    """The stand-in's state and its request handling; `serve()` puts it on a port."""

    def __init__(
        self,
        *,
        polls_to_done: int = 1,
        backend: JobBackend | None = None,
        instances: InstanceBackend | None = None,
    ) -> None:
        self.polls_to_done = polls_to_done
        self.backend: JobBackend = backend or InMemoryJobs()
        self.instance_backend = instances
        self.passwords: dict[str, str] = {}  # profile name -> its input-only password
        self.lock = threading.RLock()
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.kills: list[Kill] = []
        self.killed: list[Request] = []  # the requests whose caller was killed
        self.operations: dict[str, Op] = {}
        self.by_request_id: dict[tuple[str, str], str] = {}  # (collection, requestId) -> op
        self.profiles: dict[str, Json] = {}
        self.jobs: dict[str, Json] = {}
        self.instances: dict[tuple[str, str], Json] = {}
        self.restarts: dict[str, int] = {}
        self.backups: dict[tuple[str, str], Json] = {}
        self.backup_ops: dict[tuple[str, str], str] = {}  # a backup run's operation
        self.backup_errors: dict[str, str] = {}  # instance -> why each backup of it fails
        self.held_backups: set[str] = set()  # instances whose backups run until released
        self.series: list[Json] = []
        self.series_page_size = 100
        self.databases = ["postgres"]  # each job's objects: one per database
        self.objects_page_size = 50
        # The instances' side for the Cloud SQL connector (connectSettings, certificates).
        self.cloudsql: Instances | None = None
        self._ids = itertools.count(1)
        self._routes: list[tuple[str, re.Pattern[str], Callable[..., Json]]] = [
            ("POST", re.compile(_LOCATION + r"/connectionProfiles"), self._create_profile),
            ("GET", re.compile(_LOCATION + r"/connectionProfiles/(?P<id>[^/:]+)"), self._profile),
            (
                "DELETE",
                re.compile(_LOCATION + r"/connectionProfiles/(?P<id>[^/:]+)"),
                self._delete_profile,
            ),
            ("POST", re.compile(_LOCATION + r"/migrationJobs"), self._create_job),
            ("GET", re.compile(_LOCATION + r"/migrationJobs/(?P<id>[^/:]+)"), self._job),
            ("DELETE", re.compile(_LOCATION + r"/migrationJobs/(?P<id>[^/:]+)"), self._delete_job),
            (
                "POST",
                re.compile(_LOCATION + r"/migrationJobs/(?P<id>[^/:]+):(?P<verb>\w+)"),
                self._job_action,
            ),
            (
                "GET",
                re.compile(_LOCATION + r"/migrationJobs/(?P<id>[^/:]+)/objects"),
                self._job_objects,
            ),
            ("GET", re.compile(_LOCATION + r"/operations/(?P<id>[^/:]+)"), self._dms_operation),
            (
                "GET",
                re.compile(_CONNECT + r"/instances/(?P<instance>[^/:]+)/connectSettings"),
                self._connect_settings,
            ),
            (
                "POST",
                re.compile(_CONNECT + r"/instances/(?P<instance>[^/:]+):generateEphemeralCert"),
                self._ephemeral_cert,
            ),
            ("POST", re.compile(re.escape(TOKEN_PATH)), self._token),
            ("GET", re.compile(_SQL + r"/instances/(?P<instance>[^/]+)"), self._instance),
            ("PATCH", re.compile(_SQL + r"/instances/(?P<instance>[^/]+)"), self._patch_instance),
            ("POST", re.compile(_SQL + r"/instances/(?P<instance>[^/]+)/restart"), self._restart),
            (
                "POST",
                re.compile(_SQL + r"/instances/(?P<instance>[^/]+)/backupRuns"),
                self._insert_backup,
            ),
            (
                "GET",
                re.compile(_SQL + r"/instances/(?P<instance>[^/]+)/backupRuns"),
                self._backup_runs,
            ),
            (
                "GET",
                re.compile(_SQL + r"/instances/(?P<instance>[^/]+)/backupRuns/(?P<id>[^/]+)"),
                self._backup_run,
            ),
            ("GET", re.compile(_SQL + r"/operations/(?P<id>[^/]+)"), self._sql_operation),
            ("GET", re.compile(r"/v3/projects/(?P<project>[^/]+)/timeSeries"), self._time_series),
        ]

    # -- set-up and inspection, for the tests

    def add_instance(
        self,
        project: str,
        name: str,
        *,
        flags: dict[str, str] | None = None,
        backups: bool = True,
        version: str = "POSTGRES_15",
        region: str = "europe-west1",
    ) -> Json:
        """A RUNNABLE Cloud SQL instance with these database flags."""
        instance = {
            "kind": "sql#instance",
            "name": name,
            "project": project,
            "region": region,
            "state": "RUNNABLE",
            "instanceType": "CLOUD_SQL_INSTANCE",
            "databaseVersion": version,
            "connectionName": f"{project}:{region}:{name}",
            "settings": {
                "settingsVersion": "1",
                "tier": "db-custom-1-3840",
                "databaseFlags": [{"name": k, "value": v} for k, v in (flags or {}).items()],
                "backupConfiguration": {
                    "enabled": backups,
                    "startTime": "03:00",
                    "pointInTimeRecoveryEnabled": backups,
                    "transactionLogRetentionDays": 7,
                },
            },
        }
        with self.lock:
            self.instances[(project, name)] = instance
        return instance

    def add_points(
        self,
        metric: str,
        points: list[tuple[datetime, float]],
        *,
        resource: str,
        resource_labels: dict[str, str],
        metric_labels: dict[str, str] | None = None,
        value_type: str = "INT64",
    ) -> None:
        """A time series of a metric (values as int64Value strings or doubleValue)."""
        key = "int64Value" if value_type == "INT64" else "doubleValue"
        with self.lock:
            self.series.append(
                {
                    "metric": {"type": metric, "labels": metric_labels or {}},
                    "resource": {"type": resource, "labels": resource_labels},
                    "metricKind": "GAUGE",
                    "valueType": value_type,
                    "points": [
                        {
                            "interval": {"endTime": at.strftime("%Y-%m-%dT%H:%M:%S.%fZ")},
                            "value": {key: str(int(v)) if key == "int64Value" else v},
                        }
                        for at, v in points
                    ],
                }
            )

    def fail(
        self,
        status: int,
        *,
        times: int = 1,
        method: str | None = None,
        path: str = "",
        code: str | None = None,
    ) -> None:
        """The next `times` requests matching `method` and the regex `path` answer `status`."""
        with self.lock:
            self.faults.append(Fault(status, times, method, path, code))

    def kill(self, method: str, target: str, *, running: bool = False) -> None:
        """The caller of the next request with this method whose path and query match the
        regex `target` is killed once the request took effect, before it is answered."""
        with self.lock:
            self.kills.append(Kill(method, target, running))

    def requests_to(self, method: str, path: str) -> list[Request]:
        """The requests received with this method whose path matches the regex `path`."""
        with self.lock:
            return [r for r in self.requests if r.method == method and re.search(path, r.path)]

    # -- the server

    @contextmanager
    def serve(self) -> Iterator[str]:
        """Serve on a free loopback port; yields the endpoint (http://127.0.0.1:PORT/)."""
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                # Headers and body leave in two writes: without this, each answer
                # waits out the client's delayed ACK (40 ms on Linux).
                self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

            def _answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                kill = standin._kill_for(self.command, self.path)
                held = kill is not None and kill.running
                status, payload = standin.handle(self.command, self.path, raw, hold=held)
                if kill is not None and status == 200:
                    with standin.lock:
                        standin.kills.remove(kill)
                        standin.killed.append(standin.requests[-1])
                    _kill_caller(self.client_address[1], self.server.server_address[1])
                    self.close_connection = True
                    return
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = do_DELETE = _answer

            def log_message(self, format: str, *args: Any) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        server.daemon_threads = True
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1})
        thread.daemon = True
        thread.start()
        try:
            yield f"http://127.0.0.1:{server.server_address[1]}/"
        finally:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)

    def handle(
        self, method: str, target: str, raw: bytes, *, hold: bool = False
    ) -> tuple[int, Json]:
        """Answer one request: (HTTP status, JSON body); `hold`: an operation it starts is
        left running until it is polled."""
        parts = urlsplit(target)
        query = {k: v[-1] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        try:
            if parts.path == TOKEN_PATH:  # OAuth's token request is a form
                body = dict(parse_qsl(raw.decode()))
            else:
                body = json.loads(raw) if raw else None
        except ValueError:
            return 400, ApiFailure(400, "the body is not JSON").body()
        with self.lock:
            self.requests.append(Request(method, parts.path, query, body))
            polls_to_done = self.polls_to_done
            self.polls_to_done = max(1, polls_to_done) if hold else polls_to_done
            try:
                self._inject_fault(method, parts.path)
                for verb, pattern, handler in self._routes:
                    match = pattern.fullmatch(parts.path)
                    if verb == method and match:
                        return 200, handler(query=query, body=body or {}, **match.groupdict())
                raise ApiFailure(404, f"no such method: {method} {parts.path}")
            except ApiFailure as failure:
                return failure.status, failure.body()
            finally:
                self.polls_to_done = polls_to_done

    def _kill_for(self, method: str, target: str) -> Kill | None:
        with self.lock:
            return next(
                (k for k in self.kills if k.method == method and re.search(k.target, target)),
                None,
            )

    def _inject_fault(self, method: str, path: str) -> None:
        for fault in self.faults:
            if fault.times > 0 and fault.method in (None, method) and re.search(fault.path, path):
                fault.times -= 1
                raise ApiFailure(fault.status, f"injected {fault.status}", code=fault.code)

    # -- operations

    def _operation(
        self,
        api: str,
        parent: str,
        *,
        target: str,
        verb: str,
        finish: Callable[[], str | None],
        work: Work | None = None,
    ) -> Op:
        op_id = f"op-{next(self._ids)}-{uuid.uuid4().hex[:8]}"
        name = f"{parent}/operations/{op_id}" if api == "datamigration" else op_id
        op = Op(name, api, self.polls_to_done, finish, target, verb, work=work)
        self.operations[name] = op
        if op.polls_left <= 0 and (work is None or work.finished()):
            self._finish(op)
        return op

    def _finish(self, op: Op) -> None:
        op.done = True
        op.error = op.finish()

    def _poll(self, name: str) -> Op:
        op = self.operations.get(name)
        if op is None:
            raise ApiFailure(404, f"operation {name} not found")
        if not op.done:
            op.polls_left -= 1
            held = op.verb == "BACKUP_VOLUME" and op.target in self.held_backups
            if op.polls_left <= 0 and (op.work is None or op.work.finished()) and not held:
                self._finish(op)
        return op

    def _dms_op_json(self, op: Op) -> Json:
        data: Json = {
            "name": op.name,
            "done": op.done,
            "metadata": {
                "@type": "type.googleapis.com/google.cloud.clouddms.v1.OperationMetadata",
                "target": op.target,
                "verb": op.verb,
                "createTime": _now(),
                "apiVersion": "v1",
            },
        }
        if op.done and op.error:
            data["error"] = {"code": RPC_NUMBER["FAILED_PRECONDITION"], "message": op.error}
        elif op.done:
            data["response"] = {"@type": "type.googleapis.com/google.protobuf.Empty"}
        return data

    def _sql_op_json(self, op: Op, project: str) -> Json:
        data: Json = {
            "kind": "sql#operation",
            "name": op.name,
            "status": "DONE" if op.done else "RUNNING",
            "operationType": op.verb,
            "targetId": op.target,
            "targetProject": project,
            "insertTime": _now(),
            **op.extra,
        }
        if op.done and op.error:
            data["error"] = {
                "kind": "sql#operationErrors",
                "errors": [
                    {"kind": "sql#operationError", "code": "INTERNAL_ERROR", "message": op.error}
                ],
            }
        return data

    def _dms_operation(self, *, project: str, location: str, id: str, **_: Any) -> Json:
        return self._dms_op_json(
            self._poll(f"projects/{project}/locations/{location}/operations/{id}")
        )

    def _sql_operation(self, *, project: str, id: str, **_: Any) -> Json:
        return self._sql_op_json(self._poll(id), project)

    def _idempotent(self, collection: str, query: dict[str, str]) -> Json | None:
        """The first request's operation when this requestId was seen in this collection."""
        request_id = query.get("requestId")
        if not request_id:
            return None
        if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", request_id):
            raise ApiFailure(400, "requestId: letters, digits, _ and -, at most 40")
        seen = self.by_request_id.get((collection, request_id))
        return self._dms_op_json(self.operations[seen]) if seen else None

    def _remember(self, collection: str, query: dict[str, str], op: Op) -> Json:
        if query.get("requestId"):
            self.by_request_id[(collection, query["requestId"])] = op.name
        return self._dms_op_json(op)

    # -- DMS: connection profiles

    def _create_profile(
        self, *, project: str, location: str, query: dict[str, str], body: Json
    ) -> Json:
        parent = f"projects/{project}/locations/{location}"
        collection = f"{parent}/connectionProfiles"
        again = self._idempotent(collection, query)
        if again is not None:
            return again
        profile_id = query.get("connectionProfileId")
        if not profile_id:
            raise ApiFailure(400, "connectionProfileId is required")
        name = f"{collection}/{profile_id}"
        if name in self.profiles:
            raise ApiFailure(
                409, f"connection profile {name} already exists", code="ALREADY_EXISTS"
            )
        profile = {**body, "name": name, "state": "CREATING", "createTime": _now()}
        sql = profile.get("postgresql")
        if isinstance(sql, dict) and "password" in sql:
            sql["passwordSet"] = True
            # Input only: never answered, but kept for a backend that connects as DMS would.
            self.passwords[name] = sql.pop("password")
        self.profiles[name] = profile

        def finish() -> None:
            profile["state"] = "READY"

        op = self._operation("datamigration", parent, target=name, verb="create", finish=finish)
        return self._remember(collection, query, op)

    def _profile(self, *, project: str, location: str, id: str, **_: Any) -> Json:
        name = f"projects/{project}/locations/{location}/connectionProfiles/{id}"
        profile = self.profiles.get(name)
        if profile is None:
            raise ApiFailure(404, f"connection profile {name} not found")
        return profile

    def _delete_profile(
        self, *, project: str, location: str, id: str, query: dict[str, str], **_: Any
    ) -> Json:
        parent = f"projects/{project}/locations/{location}"
        collection = f"{parent}/connectionProfiles:delete"
        again = self._idempotent(collection, query)
        if again is not None:
            return again
        profile = self._profile(project=project, location=location, id=id)
        users = [
            j["name"]
            for j in self.jobs.values()
            if profile["name"] in (j.get("source"), j.get("destination"))
        ]
        if users:
            raise ApiFailure(
                400, f"the profile is used by {', '.join(users)}", code="FAILED_PRECONDITION"
            )
        profile["state"] = "DELETING"

        def finish() -> None:
            self.profiles.pop(profile["name"], None)

        op = self._operation(
            "datamigration", parent, target=profile["name"], verb="delete", finish=finish
        )
        return self._remember(collection, query, op)

    # -- DMS: migration jobs

    def _create_job(
        self, *, project: str, location: str, query: dict[str, str], body: Json
    ) -> Json:
        parent = f"projects/{project}/locations/{location}"
        collection = f"{parent}/migrationJobs"
        again = self._idempotent(collection, query)
        if again is not None:
            return again
        job_id = query.get("migrationJobId")
        if not job_id:
            raise ApiFailure(400, "migrationJobId is required")
        for key in ("type", "source", "destination"):
            if not body.get(key):
                raise ApiFailure(400, f"migration_job.{key} is required")
        for key in ("source", "destination"):
            if body[key] not in self.profiles:
                raise ApiFailure(400, f"connection profile {body[key]} does not exist")
        name = f"{collection}/{job_id}"
        if name in self.jobs:
            raise ApiFailure(409, f"migration job {name} already exists", code="ALREADY_EXISTS")
        job = {**body, "name": name, "state": "CREATING", "createTime": _now()}
        self.jobs[name] = job
        self.backend.created(job)

        def finish() -> None:
            job["state"] = "NOT_STARTED"

        op = self._operation("datamigration", parent, target=name, verb="create", finish=finish)
        return self._remember(collection, query, op)

    def _get_job(self, project: str, location: str, job_id: str) -> Json:
        name = f"projects/{project}/locations/{location}/migrationJobs/{job_id}"
        job = self.jobs.get(name)
        if job is None:
            raise ApiFailure(404, f"migration job {name} not found")
        return job

    def _job(self, *, project: str, location: str, id: str, **_: Any) -> Json:
        job = self._get_job(project, location, id)
        if job["state"] == "RUNNING" and job.get("phase") in ("FULL_DUMP", "CDC"):
            job["phase"] = self.backend.phase(job)
        return job

    def _precondition(
        self, job: Json, verb: str, states: tuple[str, ...], phases: tuple[str, ...] = ()
    ) -> None:
        if job["state"] not in states or (phases and job.get("phase") not in phases):
            now = job["state"] + (f"/{job['phase']}" if job.get("phase") else "")
            raise ApiFailure(
                400,
                f"cannot {verb} migration job {job['name']} in state {now}",
                code="FAILED_PRECONDITION",
            )

    def _destination_instance(self, job: Json) -> Json | None:
        profile = self.profiles.get(job["destination"], {})
        instance = profile.get("postgresql", {}).get("cloudSqlId")
        project = job["name"].split("/")[1]
        return self.instances.get((project, instance)) if instance else None

    def _job_action(
        self, *, project: str, location: str, id: str, verb: str, body: Json, **_: Any
    ) -> Json:
        job = self._get_job(project, location, id)
        parent = f"projects/{project}/locations/{location}"
        finish: Callable[[], str | None]
        if verb == "verify":
            self._precondition(job, verb, ("DRAFT", "NOT_STARTED", "FAILED", "STOPPED"))

            def finish() -> str | None:
                return self.backend.verify(job)

        elif verb == "demoteDestination":
            self._precondition(job, verb, ("DRAFT", "NOT_STARTED"))
            instance = self._destination_instance(job)
            if instance is None:
                raise ApiFailure(
                    400, "the destination is not an existing instance", code="FAILED_PRECONDITION"
                )

            def finish() -> str | None:
                instance["instanceType"] = "READ_REPLICA_INSTANCE"
                instance["masterInstanceName"] = f"{instance['name']}-master"
                # "Automated backups and PITR are suspended during CDC" (Google's page on
                # migrating into an existing instance): they read off until turned on again.
                backup = instance["settings"]["backupConfiguration"]
                backup["enabled"] = backup["pointInTimeRecoveryEnabled"] = False
                return None

        elif verb == "start":
            self._precondition(job, verb, ("NOT_STARTED",))
            job["state"] = "STARTING"

            def finish() -> str | None:
                job["state"], job["phase"] = "RUNNING", "FULL_DUMP"
                self.backend.started(job)
                return None

        elif verb == "promote":
            self._precondition(job, verb, ("RUNNING",), ("CDC", "READY_FOR_PROMOTE"))
            job["phase"] = "PROMOTE_IN_PROGRESS"

            def finish() -> str | None:
                job["state"] = "COMPLETED"
                instance = self._destination_instance(job)
                if instance is not None:
                    instance["instanceType"] = "CLOUD_SQL_INSTANCE"
                    instance.pop("masterInstanceName", None)
                self.backend.promoted(job)
                return None

        elif verb == "stop":
            self._precondition(job, verb, ("RUNNING",))
            job["state"] = "STOPPING"

            def finish() -> str | None:
                job["state"] = "STOPPED"
                self.backend.stopped(job)
                return None

        else:
            raise ApiFailure(404, f"no such method: {verb}")
        op = self._operation("datamigration", parent, target=job["name"], verb=verb, finish=finish)
        return self._dms_op_json(op)

    def _delete_job(
        self, *, project: str, location: str, id: str, query: dict[str, str], **_: Any
    ) -> Json:
        parent = f"projects/{project}/locations/{location}"
        collection = f"{parent}/migrationJobs:delete"
        again = self._idempotent(collection, query)
        if again is not None:
            return again
        job = self._get_job(project, location, id)
        if job["state"] in ("RUNNING", "STARTING", "STOPPING") and query.get("force") != "true":
            raise ApiFailure(
                400, f"migration job {job['name']} is {job['state']}", code="FAILED_PRECONDITION"
            )
        job["state"] = "DELETING"

        def finish() -> None:
            self.jobs.pop(job["name"], None)
            # The destination profile is always deleted with the job.
            self.profiles.pop(job["destination"], None)
            self.backend.deleted(job)

        op = self._operation(
            "datamigration", parent, target=job["name"], verb="delete", finish=finish
        )
        return self._remember(collection, query, op)

    def _job_objects(
        self, *, project: str, location: str, id: str, query: dict[str, str], **_: Any
    ) -> Json:
        job = self._get_job(project, location, id)
        databases = self.backend.databases(job) or self.databases
        running = job["state"] in ("RUNNING", "COMPLETED")
        objects = [
            {
                "name": f"{job['name']}/objects/{index}",
                "sourceObject": {"database": db, "type": "DATABASE"},
                "state": "RUNNING" if job["state"] == "RUNNING" else "NOT_STARTED",
                "phase": (job.get("phase") if running else None) or "PHASE_UNSPECIFIED",
            }
            for index, db in enumerate(databases)
        ]
        start = int(query.get("pageToken") or 0)
        size = int(query.get("pageSize") or self.objects_page_size)
        page: Json = {"migrationJobObjects": objects[start : start + size]}
        if start + size < len(objects):
            page["nextPageToken"] = str(start + size)
        return page

    # -- Cloud SQL Admin

    def _get_instance(self, project: str, name: str) -> Json:
        instance = self.instances.get((project, name))
        if instance is None:
            raise ApiFailure(404, f"The Cloud SQL instance does not exist: {name}")
        return instance

    def _busy(self, name: str) -> None:
        """Cloud SQL runs one operation at a time on an instance: another one is a 409."""
        if any(
            op.api == "sqladmin" and op.target == name and not op.done
            for op in self.operations.values()
        ):
            raise ApiFailure(
                409,
                "Operation failed because another operation was already in progress.",
            )

    def _lab(self, instance: str) -> InstanceBackend | None:
        """The backend that serves this instance in the world, if any."""
        lab = self.instance_backend
        return lab if lab is not None and lab.serves(instance) else None

    def _connectors_side(self, project: str, instance: str) -> "Instances":
        self._get_instance(project, instance)
        if self.cloudsql is None or instance not in self.cloudsql.endpoints:
            raise ApiFailure(400, f"instance {instance} takes no connections here")
        return self.cloudsql

    def _connect_settings(self, *, project: str, instance: str, **_: Any) -> Json:
        return self._connectors_side(project, instance).connect_settings(project, instance)

    def _ephemeral_cert(self, *, project: str, instance: str, body: Json, **_: Any) -> Json:
        side = self._connectors_side(project, instance)
        token = body.get("access_token")
        if token is not None and side.tokens.get(token) != LOGIN_SCOPE:
            raise ApiFailure(401, "the access token is not one for sqlservice.login")
        cert = side.ca.client_cert(body["public_key"], common_name=f"{project}:{instance}")
        return {"ephemeralCert": {"kind": "sql#sslCert", "cert": cert}}

    def _token(self, *, body: Json, **_: Any) -> Json:
        if self.cloudsql is None:
            raise ApiFailure(404, "no token endpoint here")
        return self.cloudsql.token(body)

    def _instance(self, *, project: str, instance: str, **_: Any) -> Json:
        return self._get_instance(project, instance)

    def _patch_instance(self, *, project: str, instance: str, body: Json, **_: Any) -> Json:
        current = self._get_instance(project, instance)
        self._busy(instance)
        patch = json.loads(json.dumps(body))

        def finish() -> str | None:
            flags = patch.get("settings", {}).get("databaseFlags")
            lab = self._lab(instance)
            if lab is not None and flags is not None:
                error = lab.set_flags(instance, flags)
                if error is not None:
                    return error
            _merge(current, patch)
            settings = current["settings"]
            settings["settingsVersion"] = str(int(settings["settingsVersion"]) + 1)
            return None

        op = self._operation("sqladmin", "", target=instance, verb="UPDATE", finish=finish)
        return self._sql_op_json(op, project)

    def _restart(self, *, project: str, instance: str, **_: Any) -> Json:
        self._get_instance(project, instance)
        self._busy(instance)

        lab = self._lab(instance)
        work = lab.restart(instance) if lab is not None else None

        def finish() -> str | None:
            self.restarts[instance] = self.restarts.get(instance, 0) + 1
            return work.error() if work is not None else None

        op = self._operation(
            "sqladmin", "", target=instance, verb="RESTART", finish=finish, work=work
        )
        return self._sql_op_json(op, project)

    def _insert_backup(self, *, project: str, instance: str, body: Json, **_: Any) -> Json:
        self._get_instance(project, instance)
        self._busy(instance)
        backup_id = str(1_700_000_000_000 + next(self._ids))
        run = {
            "kind": "sql#backupRun",
            "id": backup_id,
            "instance": instance,
            "status": "ENQUEUED",
            "type": "ON_DEMAND",
            "description": body.get("description", ""),
            "enqueuedTime": _now(),
        }
        self.backups[(instance, backup_id)] = run

        lab = self._lab(instance)
        work = lab.backup(instance, backup_id) if lab is not None else None

        def finish() -> str | None:
            error = self.backup_errors.get(instance)
            if error is None and work is not None:
                error = work.error()
            run["status"] = "FAILED" if error else "SUCCESSFUL"
            run["endTime"] = _now()
            if error:
                run["error"] = {"kind": "sql#operationError", "code": "INTERNAL", "message": error}
            return error

        op = self._operation(
            "sqladmin", "", target=instance, verb="BACKUP_VOLUME", finish=finish, work=work
        )
        op.extra["backupContext"] = {"kind": "sql#backupContext", "backupId": backup_id}
        self.backup_ops[(instance, backup_id)] = op.name
        if not op.done:
            run["status"] = "RUNNING"
        return self._sql_op_json(op, project)

    def _backup_run(self, *, project: str, instance: str, id: str, **_: Any) -> Json:
        self._get_instance(project, instance)
        run = self.backups.get((instance, id))
        if run is None:
            raise ApiFailure(404, f"backup run {id} not found")
        self._advance_backup(instance, id)
        return run

    def _backup_runs(self, *, project: str, instance: str, query: dict[str, str], **_: Any) -> Json:
        """backupRuns.list: newest first, a page of `maxResults` (default 100)."""
        self._get_instance(project, instance)
        ids = sorted((i for (n, i) in self.backups if n == instance), key=int, reverse=True)
        for backup_id in ids:
            self._advance_backup(instance, backup_id)
        offset = int(query.get("pageToken") or 0)
        size = int(query.get("maxResults") or 100)
        page: Json = {
            "kind": "sql#backupRunsList",
            "items": [self.backups[(instance, i)] for i in ids[offset : offset + size]],
        }
        if offset + size < len(ids):
            page["nextPageToken"] = str(offset + size)
        return page

    def _advance_backup(self, instance: str, backup_id: str) -> None:
        """A backup runs in the world whether or not its operation is read: reading the
        run moves it on as a read of its operation would."""
        name = self.backup_ops.get((instance, backup_id))
        if name is not None and not self.operations[name].done:
            self._poll(name)

    # -- Monitoring

    def _time_series(self, *, project: str, query: dict[str, str], **_: Any) -> Json:
        for required in ("filter", "interval.endTime", "view"):
            if not query.get(required):
                raise ApiFailure(400, f"{required} is required")
        clauses = dict(_FILTER_CLAUSE.findall(query["filter"]))
        if "metric.type" not in clauses:
            raise ApiFailure(400, "the filter must name exactly one metric.type")
        end = query["interval.endTime"]
        start = query.get("interval.startTime") or end
        found = []
        measured = (
            self.instance_backend.series(clauses["metric.type"]) if self.instance_backend else []
        )
        for series in [*self.series, *measured]:
            if series["metric"]["type"] != clauses["metric.type"]:
                continue
            if (
                "resource.type" in clauses
                and series["resource"]["type"] != clauses["resource.type"]
            ):
                continue
            labels = {f"resource.labels.{k}": v for k, v in series["resource"]["labels"].items()}
            labels |= {f"metric.labels.{k}": v for k, v in series["metric"]["labels"].items()}
            wanted = {k: v for k, v in clauses.items() if ".labels." in k}
            if any(labels.get(k) != v for k, v in wanted.items()):
                continue
            points = [p for p in series["points"] if start <= p["interval"]["endTime"] <= end]
            points.sort(key=lambda p: p["interval"]["endTime"], reverse=True)
            if points:
                found.append({**series, "points": points})
        offset = int(query.get("pageToken") or 0)
        page: Json = {"timeSeries": found[offset : offset + self.series_page_size]}
        if offset + self.series_page_size < len(found):
            page["nextPageToken"] = str(offset + self.series_page_size)
        return page


def _kill_caller(client_port: int, server_port: int) -> None:
    """SIGKILL the test's child process at the client end of a loopback connection.

    Linux: the connection's socket inode from /proc/net/tcp, then the child
    process holding it. Only the test process's own children are looked at.
    """
    inodes = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        local, remote = (int(a.rsplit(":", 1)[1], 16) for a in fields[1:3])
        if (local, remote) == (client_port, server_port):
            inodes.add(f"socket:[{fields[9]}]")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            parent = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if parent != os.getpid():
                continue
            if any(os.readlink(fd) in inodes for fd in (proc / "fd").iterdir()):
                os.kill(int(proc.name), signal.SIGKILL)
                return
        except OSError:  # a process that ended meanwhile
            continue
    raise AssertionError(f"no child process holds the connection from port {client_port}")


PROJECT = "shop-prod"
REGION = "europe-west1"


def dms_settings(
    endpoint: str, *, source: str = "shop-db", target: str = "shop-db-16", project: str = PROJECT
) -> dict[str, Any]:
    """A plan's dms section whose three APIs are the stand-in at `endpoint`."""
    return {
        "project": project,
        "region": REGION,
        "source_instance": source,
        "target_instance": target,
        "credentials": "anonymous",
        "api_endpoints": {"datamigration": endpoint, "sqladmin": endpoint, "monitoring": endpoint},
    }


@dataclass
class Sleeps:
    """Sleeps for real, but very briefly, and remembers what it was asked."""

    asked: list[float] = field(default_factory=list)

    def __call__(self, seconds: float) -> None:
        self.asked.append(seconds)
        time.sleep(min(seconds, 0.002))
