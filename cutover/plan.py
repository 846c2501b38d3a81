"""The plan: one YAML file that describes a move, validated with pydantic.

A plan names the source and target servers, the engine, the databases, the
writer tiers, the fence, the repoint targets and the thresholds. Sizes and
durations take units (`1MB`, `60s`). Secrets are only ever references
(`env:NAME` or `file:PATH`), resolved at the moment of use and never stored:
a literal password in a plan is an error that says how to fix it. Every
validation error names its path in the plan (`writers[1].http.stop`).
"""

import difflib
import os
import re
import shlex
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Self, Union, get_args, get_origin

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    model_validator,
)

from cutover.errors import PlanError, UsageError
from cutover.selectors import parse_selector
from cutover.types import TableName

PLAN_HINT = "fix the plan and run again; docs/plan.md describes every key"

# PostgreSQL's own convention (postgresql.conf): kB, MB, GB, TB are powers of 1024.
_BYTE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1024,
    "kib": 1024,
    "mb": 1024**2,
    "mib": 1024**2,
    "gb": 1024**3,
    "gib": 1024**3,
    "tb": 1024**4,
    "tib": 1024**4,
}
_BYTES = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$", re.IGNORECASE)
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|min|s|m|h|d)", re.IGNORECASE)
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MOVE_NAME = re.compile(r"^[a-z][a-z0-9_]{0,39}$")


def parse_bytes(value: object) -> int:
    """`1MB` -> 1048576. A bare number is bytes. Units as in postgresql.conf."""
    if isinstance(value, bool):
        raise ValueError("expected a size such as 512kB, 1MB or 2GB")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    match = _BYTES.match(str(value))
    unit = match.group(2).lower() if match else None
    if match is None or unit not in _BYTE_UNITS:
        raise ValueError("expected a size such as 512kB, 1MB or 2GB")
    return int(float(match.group(1)) * _BYTE_UNITS[unit])


def parse_duration(value: object) -> float:
    """`1m30s` -> 90.0 seconds. A bare number is seconds."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 60s, 5m or 1h30m")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    text = str(value).strip()
    parts = list(_DURATION_PART.finditer(text))
    if not parts or "".join(p.group(0) for p in parts) != re.sub(r"\s+", "", text):
        raise ValueError("expected a duration such as 500ms, 60s, 5m or 1h30m")
    return sum(float(p.group(1)) * _DURATION_UNITS[p.group(2).lower()] for p in parts)


def _check_secret_ref(value: str) -> str:
    kind, sep, rest = value.partition(":")
    if sep and kind == "env" and _ENV_NAME.match(rest):
        return value
    if sep and kind == "file" and rest:
        return value
    # The message must never contain the value: it may be the secret itself.
    raise ValueError(
        "a literal secret is not allowed in a plan: write env:NAME (an environment "
        "variable) or file:PATH (a file, e.g. a mounted Kubernetes Secret)"
    )


def _check_no_userinfo_password(value: str) -> str:
    if re.match(r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^@/\s]+@", value, re.IGNORECASE):
        raise ValueError(
            "this URL holds a password: remove it and give the credential as a "
            "reference (env:NAME or file:PATH)"
        )
    return value


def _check_move_name(value: str) -> str:
    if not _MOVE_NAME.match(value):
        raise ValueError(
            "a move name is 1 to 40 characters of a-z, 0-9 and _, starting with a letter "
            "(objects on the servers are named cutover_<move>)"
        )
    return value


def _check_db_name(value: str) -> str:
    if not value or len(value.encode()) > 63 or "\x00" in value:
        raise ValueError("a database name is 1 to 63 bytes, without NUL")
    return value


def _check_env_name(value: str) -> str:
    if not _ENV_NAME.match(value):
        raise ValueError("an environment variable's name is letters, digits and _")
    return value


def _argv(value: object) -> object:
    """A command is an argv list; a string is split the way a shell would."""
    return shlex.split(value) if isinstance(value, str) else value


SecretRef = Annotated[str, AfterValidator(_check_secret_ref)]
Bytes = Annotated[int, BeforeValidator(parse_bytes)]
Seconds = Annotated[float, BeforeValidator(parse_duration)]
MoveName = Annotated[str, AfterValidator(_check_move_name)]
DbName = Annotated[str, AfterValidator(_check_db_name)]
Url = Annotated[str, Field(pattern=r"^https?://\S+$"), AfterValidator(_check_no_userinfo_password)]
Argv = Annotated[list[str], BeforeValidator(_argv), Field(min_length=1)]
# A command's extra environment: each variable's value is a secret reference, resolved at use.
CommandEnv = dict[Annotated[str, AfterValidator(_check_env_name)], SecretRef]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _exactly_one(model: BaseModel, kinds: tuple[str, ...]) -> None:
    given = [k for k in kinds if getattr(model, k) is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one of {', '.join(kinds)} (found {len(given)})")


class Engine(StrEnum):
    """How changes travel from source to target."""

    NATIVE = "native"
    PGLOGICAL = "pglogical"
    DMS = "dms"


class LargeObjects(StrEnum):
    """What a move does with large objects, which logical replication does not carry."""

    FAIL = "fail"  # `check` reports them as a blocker: the move would leave them behind
    COPY = "copy"  # the switch copies them while the source is fenced


class SslMode(StrEnum):
    """libpq's sslmode values."""

    DISABLE = "disable"
    ALLOW = "allow"
    PREFER = "prefer"
    REQUIRE = "require"
    VERIFY_CA = "verify-ca"
    VERIFY_FULL = "verify-full"


class IpType(StrEnum):
    """Which of a Cloud SQL instance's addresses the connector dials."""

    PUBLIC = "public"
    PRIVATE = "private"
    PSC = "psc"  # Private Service Connect


# Cloud SQL's instance connection name: project (optionally domain-scoped), region, instance.
_CONNECTION_NAME = re.compile(
    r"^(?:[a-z][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]"  # [domain:]project
    r":[a-z]+-[a-z]+[0-9]+"  # region
    r":[a-z](?:[a-z0-9-]{0,96}[a-z0-9])?$"  # instance
)


def parse_connection_name(value: str) -> tuple[str, str, str]:
    """`project:region:instance` -> its three parts (a domain-scoped project keeps its domain)."""
    if not _CONNECTION_NAME.fullmatch(value):  # fullmatch: `$` would let a newline end it
        raise ValueError(
            "an instance connection name is project:region:instance, as the Cloud SQL "
            "console shows it (e.g. my-project:europe-west1:shop-db)"
        )
    project, region, instance = value.rsplit(":", 2)
    return project, region, instance


def _check_connection_name(value: str) -> str:
    parse_connection_name(value)
    return value


ConnectionName = Annotated[str, AfterValidator(_check_connection_name)]


class Server(_Model):
    """How cutover reaches one PostgreSQL server, as its controlling user.

    By `host` and `port`, or by a Cloud SQL `instance` connection name: then through
    the Cloud SQL connector (its TLS with an ephemeral client certificate, the
    address of `ip_type`), and with `iam_auth` as an IAM database user, without password.
    """

    host: str | None = Field(None, min_length=1)
    port: int = Field(5432, ge=1, le=65535)
    instance: ConnectionName | None = None
    ip_type: IpType = IpType.PUBLIC
    iam_auth: bool = False
    user: str = Field(min_length=1)
    password: SecretRef | None = None
    dbname: str = "postgres"
    sslmode: SslMode = SslMode.PREFER
    sslrootcert: str | None = None
    connect_timeout: Seconds = 10.0
    # The address the other server uses to reach this one, when it differs from `host`
    # (a private IP behind the controller's proxy, say). Replication connects there.
    replication_host: str | None = None
    # And its port there, when that differs from `port` (a NAT, a proxy, a tunnel).
    replication_port: int | None = Field(None, ge=1, le=65535)
    # How to restart this server (`prepare --restart` runs it when wal_level must change).
    restart: Argv | None = None

    # The Cloud SQL Admin API the connector asks for certificates (the plan's dms section).
    _sqladmin_endpoint: str | None = PrivateAttr(default=None)
    _cloud_credentials: str = PrivateAttr(default="application_default")

    @model_validator(mode="after")
    def _host_or_instance(self) -> Self:
        if (self.host is None) == (self.instance is None):
            raise ValueError(
                "give exactly one of host (and port) or instance (a Cloud SQL instance "
                "connection name, project:region:instance)"
            )
        if self.instance is None:
            if self.iam_auth or self.ip_type is not IpType.PUBLIC:
                raise ValueError("ip_type and iam_auth are only for a server given by instance")
            return self
        if "port" in self.model_fields_set:
            raise ValueError("port is only for a server given by host: the connector picks it")
        if self.iam_auth and self.password is not None:
            raise ValueError(
                "iam_auth signs in with an IAM token, not a password: remove password "
                "(user is the IAM user's email, or a service account's without "
                ".gserviceaccount.com)"
            )
        return self

    @property
    def address(self) -> str:
        """`host:port`, or the instance connection name: never a secret."""
        return self.instance if self.instance is not None else f"{self.host}:{self.port}"

    @property
    def peer_host(self) -> str:
        """The host that other servers and the applications use to reach this one."""
        host = self.replication_host or self.host
        if host is None:
            raise UsageError(
                f"{self.instance} is reached through the Cloud SQL connector, which other "
                "servers and the applications cannot use",
                hint="give replication_host: the instance's address as the others reach it",
            )
        return host

    def connector_settings(self) -> tuple[str | None, str]:
        """The Cloud SQL Admin API endpoint (None: Google's) and credentials the connector uses."""
        return self._sqladmin_endpoint, self._cloud_credentials

    def describe(self, dbname: str | None = None) -> str:
        """`host:port/db as user` (or `project:region:instance/db as user`): never a secret."""
        return f"{self.address}/{dbname or self.dbname} as {self.user}"


class HttpWriter(_Model):
    """A writer stopped and started by HTTP calls (e.g. 'block new connections')."""

    stop: Url
    start: Url
    status: Url | None = None  # 200 once drained
    health: Url | None = None  # GET: 200 while the writer writes successfully
    method: Literal["POST", "PUT", "GET"] = "POST"
    token: SecretRef | None = None
    timeout: Seconds = 10.0


class CommandWriter(_Model):
    """A writer stopped and started by commands (argv lists, or strings split like a shell)."""

    stop: Argv
    start: Argv
    status: Argv | None = None  # exits 0 once drained
    health: Argv | None = None  # exits 0 while the writer writes successfully
    timeout: Seconds = 60.0
    env: CommandEnv = {}  # secrets for the commands, by reference, never on a command line


class PgBouncer(_Model):
    """One PgBouncer's admin console (a user of its `admin_users`), and its configuration file."""

    host: str = Field("127.0.0.1", min_length=1)
    port: int = Field(6432, ge=1, le=65535)
    user: str = Field("pgbouncer", min_length=1)
    password: SecretRef | None = None
    config: Path | None = None  # its pgbouncer.ini: what a pgbouncer repoint rewrites
    connect_timeout: Seconds = 10.0

    def describe(self) -> str:
        """`host:port`: never a secret."""
        return f"pgbouncer {self.host}:{self.port}"


class PgBouncerWriter(_Model):
    """The application's pools: PAUSE holds new queries once in-flight transactions end."""

    pgbouncers: list[PgBouncer] = Field(min_length=1)
    databases: list[str] = Field(min_length=1)  # the names in PgBouncer's [databases]


def _check_k8s_name(value: str) -> str:
    if not _K8S_NAME.match(value):
        raise ValueError(
            "a Kubernetes name is at most 253 characters of a-z, 0-9, - and ., "
            "starting and ending with a letter or digit"
        )
    return value


def _check_selector(value: str) -> str:
    parse_selector(value)  # pure: no Kubernetes client needed to validate a plan
    return value


_K8S_NAME = re.compile(r"^[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?$")
K8sName = Annotated[str, AfterValidator(_check_k8s_name)]
LabelSelector = Annotated[str, AfterValidator(_check_selector)]


class KubernetesCluster(_Model):
    """How cutover reaches a Kubernetes API server, and the namespace it acts in."""

    # A kubeconfig file (its current context, or `context`); None: the pod's service account.
    kubeconfig: Path | None = None
    context: str | None = None
    namespace: K8sName
    timeout: Seconds = 10.0  # each API call


class KubernetesWriter(KubernetesCluster):
    """Deployments, StatefulSets and CronJobs scaled to zero (suspended) and back.

    By names, or every one of the three kinds whose labels match `selector`.
    """

    deployments: list[K8sName] = []
    statefulsets: list[K8sName] = []
    cronjobs: list[K8sName] = []
    selector: LabelSelector | None = None
    ready_timeout: Seconds = 300.0  # start waits this long for the recorded ready replicas
    # The stop deletes the running Jobs of its CronJobs (propagationPolicy Background:
    # their pods end within their grace period) instead of waiting for them to finish.
    end_running_jobs: bool = False

    @model_validator(mode="after")
    def _something(self) -> Self:
        named = self.deployments or self.statefulsets or self.cronjobs
        if not named and self.selector is None:
            raise ValueError("name deployments, statefulsets or cronjobs, or give a selector")
        return self


class Writer(_Model):
    """One writer of the application; writers stop by ascending tier and start in reverse."""

    name: str = Field(min_length=1)
    tier: int | None = Field(None, ge=0)
    http: HttpWriter | None = None
    command: CommandWriter | None = None
    pgbouncer: PgBouncerWriter | None = None
    kubernetes: KubernetesWriter | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        _exactly_one(self, ("http", "command", "pgbouncer", "kubernetes"))
        return self

    @property
    def has_health(self) -> bool:
        """Whether the writer has a health probe, asked after it starts."""
        if self.pgbouncer is not None:
            return True  # SHOW DATABASES: no database left paused
        if self.kubernetes is not None:  # ready replicas against the recorded counts
            return True
        kind = self.http or self.command
        return kind is not None and kind.health is not None


class Fence(_Model):
    """Who loses write access on the source during the switch."""

    roles: list[str] | None = None  # None: every login role but cutover's own
    read_only: bool = True


_QUALIFIED = re.compile(r'(?:"((?:[^"]|"")+)"|([^".]+))')


def parse_table(text: str) -> TableName:
    """`name`, `schema.name` or their quoted forms (`"My.Schema"."T"`) as (schema, name).

    Unquoted parts are taken as written (no case folding): what `\\dt` shows.
    A bare name is in `public`.
    """
    parts: list[str] = []
    rest = text.strip()
    while True:
        match = _QUALIFIED.match(rest)
        if match is None:
            raise ValueError(f"not a table name: {text!r} (write schema.table)")
        parts.append(match[1].replace('""', '"') if match[1] is not None else match[2].strip())
        rest = rest[match.end() :]
        if not rest:
            break
        if not rest.startswith(".") or len(parts) == 2:
            raise ValueError(f"not a table name: {text!r} (write schema.table)")
        rest = rest[1:]
    if len(parts) == 1:
        return TableName("public", parts[0])
    return TableName(parts[0], parts[1])


QualifiedTable = Annotated[TableName, BeforeValidator(lambda v: parse_table(str(v)))]


class Backfill(_Model):
    """Primary keys that prepare adds to tables without one."""

    column: str = Field(default="cutover_id", min_length=1, max_length=63)
    tables: list[QualifiedTable] | None = None  # None: every table without a key or identity
    max_replica_lag: Bytes = 64 * 1024**2  # batches pause while a replica is further behind


class FileRepoint(_Model):
    """Rewrite one key of an env or DSN file, atomically."""

    path: Path
    key: str = Field(min_length=1)
    value: str | None = None  # None: a DSN built from the target's address

    @model_validator(mode="after")
    def _no_literal_password(self) -> Self:
        if self.value is not None:
            _check_no_userinfo_password(self.value)
            if re.search(r"password\s*=", self.value, re.IGNORECASE):
                raise ValueError("the value holds a password: keep secrets out of the plan")
        return self


class CommandRepoint(_Model):
    """Run a command that points the applications at the target."""

    run: Argv
    timeout: Seconds = 60.0
    env: CommandEnv = {}  # secrets for the command, by reference, never on its command line


class PgBouncerRepoint(_Model):
    """The [databases] entries of each PgBouncer: host and port rewritten, then RELOAD."""

    pgbouncers: list[PgBouncer] = Field(min_length=1)
    databases: list[str] = Field(min_length=1)

    @model_validator(mode="after")
    def _configs(self) -> Self:
        missing = [p.describe() for p in self.pgbouncers if p.config is None]
        if missing:
            raise ValueError(f"config (pgbouncer.ini) is needed to repoint {', '.join(missing)}")
        return self


class RepointValue(StrEnum):
    """What a Kubernetes key holds: the target's address in one of these forms."""

    DSN = "dsn"  # the key's connection string, its host and port the target's
    HOST = "host"
    PORT = "port"
    HOST_PORT = "host:port"


class KubernetesRepoint(KubernetesCluster):
    """One key of a Secret or a ConfigMap, written with a compare-and-set."""

    secret: K8sName | None = None
    config_map: K8sName | None = None
    key: str = Field(min_length=1, max_length=253, pattern=r"^[-._a-zA-Z0-9]+$")
    value: RepointValue = RepointValue.DSN
    # Deployments that read the key only when they start: restarted after it changed.
    restart: list[K8sName] = []

    @model_validator(mode="after")
    def _one_object(self) -> Self:
        _exactly_one(self, ("secret", "config_map"))
        return self


class Repoint(_Model):
    """One place where a connection string lives."""

    name: str = Field(min_length=1)
    file: FileRepoint | None = None
    command: CommandRepoint | None = None
    pgbouncer: PgBouncerRepoint | None = None
    kubernetes: KubernetesRepoint | None = None

    @model_validator(mode="after")
    def _one_kind(self) -> Self:
        _exactly_one(self, ("file", "command", "pgbouncer", "kubernetes"))
        return self


class ConfigMapLedger(KubernetesCluster):
    """The ledger in ConfigMaps (`cutover-<move>-ledger`), the move's lock a Lease."""

    # A holder that has not renewed the Lease for this long is taken to be dead.
    lease_duration: Seconds = Field(30.0, ge=3.0)


class Ledger(_Model):
    """Where the move's ledger is kept: files in state_dir (default), or ConfigMaps."""

    configmap: ConfigMapLedger | None = None


class Thresholds(_Model):
    """The limits a move respects."""

    copy_timeout: Seconds = 24 * 3600.0  # start --wait gives up on the initial copy after this
    max_switch_lag: Bytes = 1024**2
    lag_window: Seconds = 30.0  # the lag must stay under max_switch_lag this long, unbroken
    ready_timeout: Seconds = 600.0  # the switch waits this long for such a window, then fails
    switch_timeout: Seconds = 60.0
    drain_timeout: Seconds = 30.0
    lock_timeout: Seconds = 2.0
    statement_timeout: Seconds = 300.0
    index_memory: Bytes = 512 * 1024**2  # maintenance_work_mem of each index build on the target


def _pattern(regex: str, message: str) -> AfterValidator:
    compiled = re.compile(regex)

    def check(value: str) -> str:
        if not compiled.match(value):
            raise ValueError(message)
        return value

    return AfterValidator(check)


# Google Cloud's own naming rules, checked here so a typo fails before any API call.
GcpProject = Annotated[
    str,
    _pattern(
        r"^(?:[a-z][a-z0-9.-]*[a-z0-9]:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$",
        "a project ID is 6 to 30 characters of a-z, 0-9 and -, starting with a letter "
        "(e.g. my-project-123)",
    ),
]
GcpRegion = Annotated[
    str, _pattern(r"^[a-z]+-[a-z]+[0-9]+$", "a region such as europe-west1 or us-central1")
]
CloudSqlInstance = Annotated[
    str,
    _pattern(
        r"^[a-z](?:[a-z0-9-]{0,96}[a-z0-9])?$",
        "a Cloud SQL instance ID is a-z, 0-9 and -, starts with a letter and does not end "
        "with - (the ID alone, not project:region:instance)",
    ),
]


class Connectivity(StrEnum):
    """How a DMS migration job's destination reaches the source."""

    STATIC_IP = "static_ip"  # the source allows the destination's outgoing public IP
    VPC_PEERING = "vpc_peering"  # the destination reaches the source in a peered VPC


class CloudCredentials(StrEnum):
    """Credentials that are not a service-account key given by reference."""

    APPLICATION_DEFAULT = "application_default"  # gcloud's, or the workload's identity
    ANONYMOUS = "anonymous"  # none at all: only for a stand-in server at api_endpoints


def _check_cloud_credentials(value: str) -> str:
    if value in set(CloudCredentials):
        return value
    try:
        return _check_secret_ref(value)
    except ValueError:
        # Never the value in the message: it may be the key itself.
        raise ValueError(
            "credentials are application_default, anonymous, or a service account's JSON "
            "key by reference: file:PATH or env:NAME"
        ) from None


CloudCredentialsRef = Annotated[str, AfterValidator(_check_cloud_credentials)]


class ApiEndpoints(_Model):
    """Where each Google API is reached instead of its public address (a test stand-in)."""

    datamigration: Url | None = None
    sqladmin: Url | None = None
    monitoring: Url | None = None


class NewCloudSqlInstance(_Model):
    """The Cloud SQL instance DMS creates as the destination (its name: dms.target_instance)."""

    database_version: Annotated[
        str, _pattern(r"^POSTGRES_[0-9]+$", "a version as Cloud SQL names it, e.g. POSTGRES_16")
    ]
    tier: str = Field(min_length=1)  # db-custom-2-7680
    edition: Literal["ENTERPRISE", "ENTERPRISE_PLUS"] | None = None
    availability_type: Literal["ZONAL", "REGIONAL"] = "ZONAL"
    zone: str | None = None
    data_disk_type: Literal["PD_SSD", "PD_HDD", "HYPERDISK_BALANCED"] = "PD_SSD"
    data_disk_size_gb: int | None = Field(None, ge=10)
    database_flags: dict[str, str] = {}
    root_password: SecretRef | None = None


class Dms(_Model):
    """Google Database Migration Service: Cloud SQL to Cloud SQL, for engine: dms."""

    project: GcpProject
    region: GcpRegion
    source_instance: CloudSqlInstance
    # The destination's Cloud SQL instance: one that exists already (DMS demotes it to a
    # replica), or, with new_target, the one DMS creates under this name.
    target_instance: CloudSqlInstance
    new_target: NewCloudSqlInstance | None = None
    connectivity: Connectivity = Connectivity.STATIC_IP
    network: str | None = None  # the VPC to peer with: projects/P/global/networks/N
    # A service account's JSON key by reference (file:PATH or env:NAME), or one of
    # application_default and anonymous.
    credentials: CloudCredentialsRef = CloudCredentials.APPLICATION_DEFAULT
    api_endpoints: ApiEndpoints = ApiEndpoints()

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if self.source_instance == self.target_instance:
            raise ValueError("source_instance and target_instance must differ")
        if self.connectivity is Connectivity.VPC_PEERING and not self.network:
            raise ValueError(
                "connectivity vpc_peering needs network: the VPC to peer with "
                "(projects/PROJECT/global/networks/NAME)"
            )
        if self.connectivity is Connectivity.STATIC_IP and self.network is not None:
            raise ValueError("network is only for connectivity: vpc_peering")
        endpoints = self.api_endpoints
        if self.credentials == CloudCredentials.ANONYMOUS and None in (
            endpoints.datamigration,
            endpoints.sqladmin,
            endpoints.monitoring,
        ):
            raise ValueError(
                "credentials: anonymous is only for a stand-in server: give api_endpoints "
                "for datamigration, sqladmin and monitoring, or use application_default "
                "or a key by reference (file:PATH)"
            )
        return self


# A resource's address in Terraform's state: `module.source.google_sql_database_instance.this`,
# with an index where the resource has count or for_each (`...this[0]`, `...this["a"]`).
_TF_NAME = r"[A-Za-z_][A-Za-z0-9_-]*"
_TF_INDEX = r'(?:\[(?:[0-9]+|"[^"\]]+")\])?'
TerraformAddress = Annotated[
    str,
    _pattern(
        rf"^(?:module\.{_TF_NAME}{_TF_INDEX}\.)*"  # the modules it is in, then its type and name
        rf"(?!module\.|data\.){_TF_NAME}\.{_TF_NAME}{_TF_INDEX}$",
        "a resource address as `terraform state list` prints it, e.g. "
        "module.source.google_sql_database_instance.this",
    ),
]


class TerraformModule(_Model):
    """The Terraform root module that holds the instances: the move changes them through it."""

    directory: Path  # relative: to the plan's folder
    source_address: TerraformAddress  # the old instance, destroyed by cleanup --retire-source
    # Flags the source keeps besides the two the move adds: the module's variable is the whole map.
    source_database_flags: dict[str, str] = {}
    binary: str = Field(default="terraform", min_length=1)
    lock_timeout: Seconds = 120.0  # how long a plan or an apply waits for the state's lock
    # Terraform's extra environment (TF_VAR_migration_password, a backend's token): each
    # value a secret reference, resolved at use, never written to the variables file.
    env: CommandEnv = {}

    @model_validator(mode="after")
    def _directory_exists(self) -> Self:
        # A relative directory is checked by `load`, once anchored at the plan's folder.
        if self.directory.is_absolute() and not self.directory.is_dir():
            raise ValueError(f"directory {self.directory} is not a directory")
        return self


class Plan(_Model):
    """A whole move."""

    move: MoveName
    source: Server
    target: Server
    engine: Engine = Engine.NATIVE
    databases: list[DbName] = Field(min_length=1)
    writers: list[Writer] = []
    fence: Fence = Fence()
    backfill: Backfill = Backfill()
    large_objects: LargeObjects = LargeObjects.FAIL
    dms: Dms | None = None  # engine: dms only
    # The instances' Terraform: prepare, the switch and cleanup --retire-source change them
    # through it (docs/terraform.md), and the source's flags are never set by the API then.
    terraform: TerraformModule | None = None
    # With true, prepare puts event triggers on the source that refuse DDL from every session
    # but cutover's own until cleanup removes them (temporary objects, GRANT, REVOKE, COMMENT
    # and REFRESH MATERIALIZED VIEW pass; rows are never affected): a schema change during a
    # move breaks its replication. They need a superuser (Cloud SQL: cloudsqlsuperuser).
    ddl_guard: bool = False
    repoint: list[Repoint] = []
    thresholds: Thresholds = Thresholds()
    state_dir: Path = Path(".cutover")
    ledger: Ledger = Ledger()

    @model_validator(mode="after")
    def _unique_names(self) -> Self:
        for label, names in (
            ("databases", self.databases),
            ("writers", [w.name for w in self.writers]),
            ("repoint", [r.name for r in self.repoint]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(f"{label}: names must be unique, repeated: {', '.join(dupes)}")
        return self

    @model_validator(mode="after")
    def _engine_settings(self) -> Self:
        if self.engine is Engine.DMS and self.dms is None:
            raise ValueError(
                "engine: dms needs a dms section (project, region, source_instance, "
                "target_instance; docs/plan.md shows one)"
            )
        if self.engine is not Engine.DMS and self.dms is not None:
            raise ValueError(
                f"the dms section is only for engine: dms (this plan's engine is "
                f"{self.engine.value})"
            )
        return self

    @model_validator(mode="after")
    def _source_reachable(self) -> Self:
        # Every engine has the source dialled from elsewhere: the target's subscription,
        # or DMS's connection profile. The connector's route is this process's alone.
        if self.source.instance is not None and self.source.replication_host is None:
            raise ValueError(
                "source: a source given by instance needs replication_host: the address "
                "at which the target (or DMS) reaches it (its private or public IP)"
            )
        return self

    @model_validator(mode="after")
    def _connector_settings(self) -> Self:
        # A server given by instance asks the dms section's Cloud SQL Admin API, with its
        # credentials, for its certificates (a stand-in's in tests).
        if self.dms is None:
            return self
        for label, server in (("source", self.source), ("target", self.target)):
            if server.instance is None:
                continue
            if self.dms.credentials == CloudCredentials.ANONYMOUS:
                raise ValueError(
                    f"{label}.instance: the Cloud SQL connector needs credentials that carry "
                    "a token: give dms.credentials a service account's key (file:PATH) "
                    "or application_default"
                )
            server._sqladmin_endpoint = self.dms.api_endpoints.sqladmin
            server._cloud_credentials = self.dms.credentials
        return self

    # The reversed plan of a fallback keeps the forward move's ledger (see `reversed`).
    _forward_move: str | None = PrivateAttr(default=None)

    @property
    def ledger_move(self) -> str:
        """The move whose ledger records this plan's runs and holds its identity."""
        return self._forward_move or self.move

    def reversed(self) -> "Plan":
        """The same move the other way, target to source, its objects named <move>_back;
        its ledger (and identity) the forward move's."""
        back = self.model_copy(
            update={"source": self.target, "target": self.source, "move": f"{self.move}_back"}
        )
        back._forward_move = self.ledger_move
        return back

    def tiers(self) -> list[list[Writer]]:
        """Writers grouped by tier, in stopping order (a writer without a tier is its own)."""
        groups: dict[int, list[Writer]] = {}
        for index, writer in enumerate(self.writers):
            groups.setdefault(writer.tier if writer.tier is not None else index, []).append(writer)
        return [groups[t] for t in sorted(groups)]


def resolve_secret(ref: str, *, where: str) -> str:
    """The value behind `env:NAME` or `file:PATH`; `where` names the plan key for errors."""
    kind, _, rest = ref.partition(":")
    if kind == "env":
        value = os.environ.get(rest)
        if value is None:
            raise UsageError(
                f"{where} refers to env:{rest}, which is not set",
                hint=f"export {rest} before running cutover, or use file:PATH",
            )
        return value
    try:
        return Path(rest).expanduser().read_text().rstrip("\r\n")
    except OSError as exc:
        raise UsageError(
            f"{where} refers to file:{rest}, which cannot be read ({exc.strerror})",
            hint="check the path and that this user may read it",
        ) from None


def format_location(loc: tuple[int | str, ...]) -> str:
    """('writers', 1, 'http', 'stop') -> 'writers[1].http.stop'."""
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _model_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model class found at a location of the plan, if any."""
    model: Any = Plan
    for part in loc:
        if isinstance(part, int):
            continue
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(part)
        if field is None:
            return None
        model = next(_models_in(field.annotation), None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _models_in(annotation: Any) -> Iterator[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
    if get_origin(annotation) in (list, Union, UnionType, Annotated) or isinstance(
        annotation, UnionType
    ):
        for arg in get_args(annotation):
            yield from _models_in(arg)


def _describe(error: Any) -> str:
    loc: tuple[int | str, ...] = tuple(error["loc"])
    where = format_location(loc)
    if error["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        allowed = sorted(parent.model_fields) if parent else []
        close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
        suggestion = f"; did you mean '{close[0]}'?" if close else ""
        return f"{where}: unknown key{suggestion} (allowed: {', '.join(allowed)})"
    message = str(error["msg"]).removeprefix("Value error, ")
    return f"{where}: {message}"


def parse(data: object, *, origin: str = "plan") -> Plan:
    """Validate an already-loaded plan document."""
    if not isinstance(data, dict):
        raise PlanError(f"{origin}: a plan is a YAML mapping (move:, source:, ...)", hint=PLAN_HINT)
    try:
        return Plan.model_validate(data)
    except ValidationError as exc:
        # Only locations and messages are shown: the input may be a secret.
        lines = [_describe(e) for e in exc.errors(include_input=False)]
        raise PlanError(
            f"{origin} is not valid:\n  " + "\n  ".join(lines), hint=PLAN_HINT
        ) from None


def load(path: Path) -> Plan:
    """Read, validate and anchor a plan file (a relative state_dir is beside the plan)."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise PlanError(
            f"cannot read the plan {path}: {exc.strerror}",
            hint="pass --plan/-p PATH or set CUTOVER_PLAN; `cutover lab up` writes a sample plan",
        ) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or "malformed YAML"
        raise PlanError(f"{path}: not valid YAML{where}: {problem}", hint=PLAN_HINT) from None
    plan = parse(data, origin=str(path))
    if not plan.state_dir.is_absolute():
        plan = plan.model_copy(update={"state_dir": (path.parent / plan.state_dir).resolve()})
    module = plan.terraform
    if module is not None and not module.directory.is_absolute():
        directory = (path.parent / module.directory).resolve()
        if not directory.is_dir():
            raise PlanError(
                f"{path} is not valid:\n  terraform.directory: {directory} is not a directory",
                hint=PLAN_HINT,
            )
        module = module.model_copy(update={"directory": directory})
        plan = plan.model_copy(update={"terraform": module})
    return plan


def dump(plan: Plan) -> str:
    """The plan as YAML (it holds references, never secret values)."""
    data = plan.model_dump(mode="json", exclude_defaults=True)
    data.setdefault("engine", plan.engine.value)
    return yaml.safe_dump(data, sort_keys=False)
