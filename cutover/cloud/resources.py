"""What the Google APIs answer, as typed values: jobs, profiles, operations, instances, points.

Each `*_from` function maps one JSON resource, as the API returns it, to a
frozen dataclass. None of them raises on a missing field or on an enum value
it does not know: the APIs add both over time, and a status command must not
fail because Google added a state. The enumerations are taken from the
discovery documents bundled with google-api-python-client 2.202.0
(datamigration v1 rev 20261103, sqladmin v1 rev 20261018, monitoring v3 rev
20260129). Also here: the read-merge-write of Cloud SQL's database flags,
whose patch replaces the whole list. Pure: nothing here talks to a network.
"""

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, TypeVar

E = TypeVar("E", bound=StrEnum)

Json = Mapping[str, Any]

# The Cloud SQL flags a source needs to be decoded (DMS reads it through pglogical); both
# restart the instance when they change (Cloud SQL's documentation).
LOGICAL_DECODING_FLAGS = {"cloudsql.logical_decoding": "on", "cloudsql.enable_pglogical": "on"}


class Api(StrEnum):
    """The Google APIs cutover calls, by the name their discovery document has."""

    DATAMIGRATION = "datamigration"
    SQLADMIN = "sqladmin"
    MONITORING = "monitoring"


class JobState(StrEnum):
    """MigrationJob.state."""

    STATE_UNSPECIFIED = "STATE_UNSPECIFIED"
    MAINTENANCE = "MAINTENANCE"
    DRAFT = "DRAFT"
    CREATING = "CREATING"
    NOT_STARTED = "NOT_STARTED"
    RUNNING = "RUNNING"
    FAILED = "FAILED"
    COMPLETED = "COMPLETED"
    DELETING = "DELETING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    DELETED = "DELETED"
    UPDATING = "UPDATING"
    STARTING = "STARTING"
    RESTARTING = "RESTARTING"
    RESUMING = "RESUMING"


class JobPhase(StrEnum):
    """MigrationJob.phase."""

    PHASE_UNSPECIFIED = "PHASE_UNSPECIFIED"
    FULL_DUMP = "FULL_DUMP"
    CDC = "CDC"
    PROMOTE_IN_PROGRESS = "PROMOTE_IN_PROGRESS"
    WAITING_FOR_SOURCE_WRITES_TO_STOP = "WAITING_FOR_SOURCE_WRITES_TO_STOP"  # RDS only
    PREPARING_THE_DUMP = "PREPARING_THE_DUMP"  # RDS only
    READY_FOR_PROMOTE = "READY_FOR_PROMOTE"
    PHASE_FAILBACK = "PHASE_FAILBACK"  # SQL Server only


class ProfileState(StrEnum):
    """ConnectionProfile.state."""

    STATE_UNSPECIFIED = "STATE_UNSPECIFIED"
    DRAFT = "DRAFT"
    CREATING = "CREATING"
    READY = "READY"
    UPDATING = "UPDATING"
    DELETING = "DELETING"
    DELETED = "DELETED"
    FAILED = "FAILED"


class ObjectState(StrEnum):
    """MigrationJobObject.state: one database (or table) of a job."""

    STATE_UNSPECIFIED = "STATE_UNSPECIFIED"
    NOT_STARTED = "NOT_STARTED"
    RUNNING = "RUNNING"
    STOPPING = "STOPPING"
    STOPPED = "STOPPED"
    RESTARTING = "RESTARTING"
    FAILED = "FAILED"
    REMOVING = "REMOVING"
    NOT_SELECTED = "NOT_SELECTED"
    COMPLETED = "COMPLETED"


class ObjectPhase(StrEnum):
    """MigrationJobObject.phase."""

    PHASE_UNSPECIFIED = "PHASE_UNSPECIFIED"
    FULL_DUMP = "FULL_DUMP"
    CDC = "CDC"
    READY_FOR_PROMOTE = "READY_FOR_PROMOTE"
    PROMOTE_IN_PROGRESS = "PROMOTE_IN_PROGRESS"
    PROMOTED = "PROMOTED"
    DIFF_BACKUP = "DIFF_BACKUP"
    CREATING_BACKUP = "CREATING_BACKUP"
    RESTORING_BACKUP = "RESTORING_BACKUP"


class InstanceState(StrEnum):
    """DatabaseInstance.state (Cloud SQL)."""

    SQL_INSTANCE_STATE_UNSPECIFIED = "SQL_INSTANCE_STATE_UNSPECIFIED"
    RUNNABLE = "RUNNABLE"
    SUSPENDED = "SUSPENDED"
    PENDING_DELETE = "PENDING_DELETE"
    PENDING_CREATE = "PENDING_CREATE"
    MAINTENANCE = "MAINTENANCE"
    FAILED = "FAILED"
    ONLINE_MAINTENANCE = "ONLINE_MAINTENANCE"
    REPAIRING = "REPAIRING"


class BackupStatus(StrEnum):
    """BackupRun.status (Cloud SQL)."""

    SQL_BACKUP_RUN_STATUS_UNSPECIFIED = "SQL_BACKUP_RUN_STATUS_UNSPECIFIED"
    ENQUEUED = "ENQUEUED"
    OVERDUE = "OVERDUE"
    RUNNING = "RUNNING"
    FAILED = "FAILED"
    SUCCESSFUL = "SUCCESSFUL"
    SKIPPED = "SKIPPED"
    DELETION_PENDING = "DELETION_PENDING"
    DELETION_FAILED = "DELETION_FAILED"
    DELETED = "DELETED"


# google.rpc.Code, the `code` of a Status: named in messages instead of a bare number.
RPC_CODES = (
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
)


def _enum(kind: type[E], value: object) -> E:
    """The member named `value`, or the kind's first (unspecified) member for anything else."""
    for member in kind:
        if member.value == value:
            return member
    return next(iter(kind))


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def _mapping(value: object) -> Json:
    return value if isinstance(value, Mapping) else {}


def _items(value: object) -> list[Json]:
    return [v for v in value if isinstance(v, Mapping)] if isinstance(value, list) else []


def _int(value: object) -> int | None:
    """An int64 field (JSON carries those as strings) or an int32 one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?[0-9]+", value):
        return int(value)
    return None


def _last_part(name: str) -> str:
    return name.rsplit("/", 1)[-1]


@dataclass(frozen=True)
class Status:
    """What went wrong, as an API reports it: a code's name and a message."""

    code: str
    message: str

    def __str__(self) -> str:
        return f"{self.code}: {self.message}" if self.message else self.code


def status_from(data: object) -> Status | None:
    """A google.rpc.Status (`{code, message}`); None when it says nothing went wrong."""
    fields = _mapping(data)
    number = _int(fields.get("code"))
    message = _text(fields.get("message"))
    if not number and not message:
        return None
    if number is not None and 0 <= number < len(RPC_CODES):
        code = RPC_CODES[number]
    else:
        code = str(number) if number is not None else "UNKNOWN"
    return Status(code, message)


@dataclass(frozen=True)
class Operation:
    """A long-running operation of DMS or Cloud SQL, as the poller needs it."""

    api: Api
    name: str  # DMS: projects/P/locations/R/operations/ID; Cloud SQL: the ID alone
    done: bool
    error: Status | None = None
    project: str = ""  # Cloud SQL names its operations within a project
    target: str = ""  # what it acts on: DMS metadata.target, Cloud SQL targetId
    backup_id: str | None = None  # Cloud SQL backupRuns.insert: the new backup run's ID


def dms_operation_from(data: Json) -> Operation:
    """A DMS (google.longrunning) Operation: {name, done, error, metadata, response}."""
    metadata = _mapping(data.get("metadata"))
    return Operation(
        api=Api.DATAMIGRATION,
        name=_text(data.get("name")),
        done=data.get("done") is True,
        error=status_from(data.get("error")),
        target=_text(metadata.get("target")),
    )


def sql_operation_from(data: Json) -> Operation:
    """A Cloud SQL Operation: {name, status PENDING|RUNNING|DONE, error.errors[], ...}."""
    errors = _items(_mapping(data.get("error")).get("errors"))
    error = None
    if errors:
        code = _text(errors[0].get("code")) or "UNKNOWN"
        error = Status(code, "; ".join(_text(e.get("message")) for e in errors if e.get("message")))
    backup = _mapping(data.get("backupContext"))
    return Operation(
        api=Api.SQLADMIN,
        name=_text(data.get("name")),
        done=data.get("status") == "DONE",
        error=error,
        project=_text(data.get("targetProject")),
        target=_text(data.get("targetId")),
        backup_id=_text(backup.get("backupId")) or None,
    )


@dataclass(frozen=True)
class MigrationJob:
    """A DMS migration job: where it stands, and what failed if it did."""

    name: str
    state: JobState
    phase: JobPhase
    error: Status | None = None
    source: str = ""  # the source connection profile's name
    destination: str = ""
    type: str = ""  # ONE_TIME | CONTINUOUS

    @property
    def id(self) -> str:
        """The job's ID, the last part of its name."""
        return _last_part(self.name)

    @property
    def is_promotable(self) -> bool:
        """Replicating changes after the full dump: promote may be called now."""
        return self.state is JobState.RUNNING and self.phase in (
            JobPhase.CDC,
            JobPhase.READY_FOR_PROMOTE,
        )


def job_from(data: Json) -> MigrationJob:
    """A MigrationJob resource."""
    return MigrationJob(
        name=_text(data.get("name")),
        state=_enum(JobState, data.get("state")),
        phase=_enum(JobPhase, data.get("phase")),
        error=status_from(data.get("error")),
        source=_text(data.get("source")),
        destination=_text(data.get("destination")),
        type=_text(data.get("type")),
    )


@dataclass(frozen=True)
class ConnectionProfile:
    """A DMS connection profile: one end of a migration job."""

    name: str
    state: ProfileState
    error: Status | None = None
    cloud_sql_id: str = ""  # the Cloud SQL instance behind it, when there is one

    @property
    def id(self) -> str:
        """The profile's ID, the last part of its name."""
        return _last_part(self.name)


def profile_from(data: Json) -> ConnectionProfile:
    """A ConnectionProfile resource (postgresql or cloudsql)."""
    instance = _text(_mapping(data.get("postgresql")).get("cloudSqlId")) or _text(
        _mapping(data.get("cloudsql")).get("cloudSqlId")
    )
    return ConnectionProfile(
        name=_text(data.get("name")),
        state=_enum(ProfileState, data.get("state")),
        error=status_from(data.get("error")),
        cloud_sql_id=instance,
    )


@dataclass(frozen=True)
class MigrationJobObject:
    """One object (a database, or a table) of a migration job, and where it stands."""

    name: str
    state: ObjectState
    phase: ObjectPhase
    database: str = ""
    schema: str = ""
    table: str = ""
    error: Status | None = None


def job_object_from(data: Json) -> MigrationJobObject:
    """A MigrationJobObject resource."""
    source = _mapping(data.get("sourceObject"))
    return MigrationJobObject(
        name=_text(data.get("name")),
        state=_enum(ObjectState, data.get("state")),
        phase=_enum(ObjectPhase, data.get("phase")),
        database=_text(source.get("database")),
        schema=_text(source.get("schema")),
        table=_text(source.get("table")),
        error=status_from(data.get("error")),
    )


@dataclass(frozen=True)
class Flag:
    """One of a Cloud SQL instance's database flags; None: a flag that takes no value."""

    name: str
    value: str | None = None

    def to_json(self) -> dict[str, str]:
        """The flag as settings.databaseFlags holds it."""
        return (
            {"name": self.name} if self.value is None else {"name": self.name, "value": self.value}
        )


@dataclass(frozen=True)
class BackupConfiguration:
    """An instance's automated backups and point-in-time recovery."""

    enabled: bool = False
    point_in_time_recovery: bool = False
    start_time: str | None = None  # HH:MM, UTC
    transaction_log_retention_days: int | None = None

    @property
    def on(self) -> bool:
        """Backups and point-in-time recovery both on: what a promoted target needs."""
        return self.enabled and self.point_in_time_recovery


@dataclass(frozen=True)
class Instance:
    """A Cloud SQL instance, as much of it as a move needs."""

    name: str
    state: InstanceState
    flags: tuple[Flag, ...] = ()
    backup: BackupConfiguration = BackupConfiguration()
    instance_type: str = ""  # CLOUD_SQL_INSTANCE, READ_REPLICA_INSTANCE, ...
    master_instance_name: str = ""  # set while it replicates from another (a DMS demote)
    database_version: str = ""
    connection_name: str = ""  # project:region:instance
    # settings.backupConfiguration as read, every field: a patch of it sends them all back.
    backup_settings: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)


def instance_from(data: Json) -> Instance:
    """A DatabaseInstance resource."""
    settings = _mapping(data.get("settings"))
    backup = _mapping(settings.get("backupConfiguration"))
    flags = tuple(
        Flag(_text(f.get("name")), f["value"] if isinstance(f.get("value"), str) else None)
        for f in _items(settings.get("databaseFlags"))
    )
    return Instance(
        name=_text(data.get("name")),
        state=_enum(InstanceState, data.get("state")),
        flags=flags,
        backup=BackupConfiguration(
            enabled=backup.get("enabled") is True,
            point_in_time_recovery=backup.get("pointInTimeRecoveryEnabled") is True,
            start_time=_text(backup.get("startTime")) or None,
            transaction_log_retention_days=_int(backup.get("transactionLogRetentionDays")),
        ),
        instance_type=_text(data.get("instanceType")),
        master_instance_name=_text(data.get("masterInstanceName")),
        database_version=_text(data.get("databaseVersion")),
        connection_name=_text(data.get("connectionName")),
        backup_settings=dict(backup),
    )


@dataclass(frozen=True)
class BackupRun:
    """One backup of a Cloud SQL instance (an on-demand one, for cutover)."""

    id: str
    status: BackupStatus
    error: Status | None = None
    description: str = ""

    @property
    def finished(self) -> bool:
        """Whether the backup ended, one way or another."""
        return self.status in (BackupStatus.SUCCESSFUL, BackupStatus.FAILED, BackupStatus.SKIPPED)


def backup_run_from(data: Json) -> BackupRun:
    """A BackupRun resource (its `error` is a Cloud SQL OperationError)."""
    error = _mapping(data.get("error"))
    return BackupRun(
        id=_text(data.get("id")),
        status=_enum(BackupStatus, data.get("status")),
        error=Status(_text(error.get("code")) or "UNKNOWN", _text(error.get("message")))
        if error
        else None,
        description=_text(data.get("description")),
    )


def merge_flags(current: Sequence[Flag], wanted: Mapping[str, str | None]) -> tuple[Flag, ...]:
    """The whole flag list with `wanted` applied: a value sets the flag, None removes it.

    Cloud SQL's instances.patch replaces the whole list (a flag left out is set
    back to its default, and may restart the instance), so a change is always
    the list read just before, with only these flags changed. Every other flag
    keeps its value and its place; a new flag goes last, in the order given.
    """
    merged: list[Flag] = []
    placed: set[str] = set()
    for flag in current:
        if flag.name not in wanted:
            merged.append(flag)
            continue
        value = wanted[flag.name]
        if value is not None and flag.name not in placed:
            merged.append(Flag(flag.name, value))
        placed.add(flag.name)
    merged.extend(Flag(n, v) for n, v in wanted.items() if v is not None and n not in placed)
    return tuple(merged)


def flags_differ(
    current: Sequence[Flag], wanted: Mapping[str, str | None]
) -> dict[str, str | None]:
    """The wanted flags that are not so yet (a patch with nothing to change is not sent)."""
    values: dict[str, list[str | None]] = {}
    for flag in current:
        values.setdefault(flag.name, []).append(flag.value)
    return {
        name: value
        for name, value in wanted.items()
        if (value is None and name in values) or (value is not None and values.get(name) != [value])
    }


@dataclass(frozen=True)
class Point:
    """One point of a time series: its value and the end of the interval it covers."""

    value: float
    end_time: datetime


@dataclass(frozen=True)
class Series:
    """One time series: its labels and its points, newest first (as Monitoring sends them)."""

    metric_labels: Mapping[str, str]
    resource_labels: Mapping[str, str]
    points: tuple[Point, ...]


# RFC 3339 as Monitoring writes it: up to nine fractional digits, Z or an offset.
_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:\d{2})$", re.IGNORECASE
)


def parse_time(text: str) -> datetime | None:
    """An RFC 3339 timestamp as an aware datetime (fractions past microseconds cut)."""
    match = _RFC3339.match(text)
    if match is None:
        return None
    fraction = (match.group(2) or "").ljust(6, "0")[:6]
    offset = "+00:00" if match.group(3).upper() == "Z" else match.group(3)
    try:
        return datetime.fromisoformat(f"{match.group(1)}.{fraction}{offset}")
    except ValueError:
        return None


def format_time(moment: datetime) -> str:
    """An aware datetime as RFC 3339 in UTC, as the APIs take it."""
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _value(typed: Json) -> float | None:
    if "int64Value" in typed:
        number = _int(typed["int64Value"])
        return float(number) if number is not None else None
    if "doubleValue" in typed:
        double = typed["doubleValue"]
        if isinstance(double, int | float) and not isinstance(double, bool):
            return float(double)
        if isinstance(double, str):  # "NaN", "Infinity" come as strings
            try:
                return float(double)
            except ValueError:
                return None
        return None
    if "boolValue" in typed:
        return 1.0 if typed["boolValue"] is True else 0.0
    return None


def series_from(data: Json) -> Series:
    """A TimeSeries of a timeSeries.list answer; points without a number or a time are left out."""
    points: list[Point] = []
    for point in _items(data.get("points")):
        value = _value(_mapping(point.get("value")))
        end = parse_time(_text(_mapping(point.get("interval")).get("endTime")))
        if value is not None and end is not None:
            points.append(Point(value, end))
    labels = {
        k: v
        for k, v in _mapping(_mapping(data.get("metric")).get("labels")).items()
        if isinstance(v, str)
    }
    resource = {
        k: v
        for k, v in _mapping(_mapping(data.get("resource")).get("labels")).items()
        if isinstance(v, str)
    }
    points.sort(key=lambda p: p.end_time, reverse=True)
    return Series(labels, resource, tuple(points))
