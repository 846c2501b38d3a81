"""Repoint one key of a Kubernetes Secret or ConfigMap, with a compare-and-set.

The key is written with the `resourceVersion` it was read at: a 409 Conflict (someone
changed the object meanwhile) reads it again and retries, a bounded number of times,
so a concurrent change to another key is never overwritten. The value is the target's
address as a DSN (the key's connection string with the target's host and port: its
user, password and options stay), a host, a port or host:port.

The value before each change is kept in a companion object of the same kind,
`<name>-cutover-previous` (same key): a Secret's old value stays as secret as the
Secret, and no pod mounts it. When that previous value already names the server
asked for (a rollback), it is written back exactly. Cleanup removes it (and the
companion once it holds nothing): a finished move keeps no copy of an old
connection string, with its password, anywhere. Deployments that read the key only
when they start get a rollout restart (the `kubectl.kubernetes.io/restartedAt`
annotation of their pod template) once the value changed; the time of the change is on
the companion, so a run killed between the two restarts them on the next run.

A Secret's values are never shown: not in a change, a log line or an error.
"""

import base64
import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cutover.errors import CutoverError, PreconditionFailed, StepFailed
from cutover.kube import api_client
from cutover.log import redact
from cutover.plan import KubernetesRepoint as KubernetesSpec
from cutover.plan import RepointValue, Server
from cutover.repoint.file import retarget
from cutover.steps import Change

log = logging.getLogger(__name__)

T = TypeVar("T")
MERGE_PATCH = "application/merge-patch+json"
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
CHANGED_AT = "cutover.io/changed-at"
COMPANION_SUFFIX = "-cutover-previous"
CONFLICT_ATTEMPTS = 5


def build_value(kind: RepointValue, current: str | None, server: Server) -> str:
    """The key's value naming `server`: a DSN keeps everything of `current` but its address."""
    host = server.peer_host
    match kind:
        case RepointValue.HOST:
            return host
        case RepointValue.PORT:
            return str(server.port)
        case RepointValue.HOST_PORT:
            return f"{host}:{server.port}"
        case RepointValue.DSN:
            if current is None or not current.strip():
                raise PreconditionFailed(
                    "the key holds no connection string to retarget",
                    hint="give the key the application's connection string first, or use "
                    "value: host, port or host:port",
                )
            return retarget(current, host, server.port)


def names(value: str, kind: RepointValue, server: Server) -> bool:
    """Whether a value of the key already names `server`."""
    if kind is RepointValue.DSN:
        return bool(value.strip()) and build_value(kind, value, server) == value
    return build_value(kind, value, server) == value


def companion_name(name: str) -> str:
    """The object that keeps the previous values of `name`'s keys."""
    return name[: 253 - len(COMPANION_SUFFIX)] + COMPANION_SUFFIX


class KubernetesRepoint:
    """One key of a Secret or a ConfigMap."""

    def __init__(self, name: str, spec: KubernetesSpec) -> None:
        self.name = name
        self._spec = spec
        self._secret = spec.secret is not None
        self._object = spec.secret or spec.config_map or ""
        self._api: client.ApiClient | None = None

    @property
    def _core(self) -> client.CoreV1Api:
        if self._api is None:
            self._api = api_client(self._spec, what=f"repoint {self.name}")
        return client.CoreV1Api(self._api)

    @property
    def _shown(self) -> str:
        kind = "secret" if self._secret else "configmap"
        return f"{kind}/{self._object}"

    def _call(self, what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return call(*args, _request_timeout=self._spec.timeout, **kwargs)
        except ApiException as exc:
            if exc.status in (404, 409):
                raise  # the caller decides: absent, or changed meanwhile
            raise StepFailed(
                f"repoint {self.name}: {what} in namespace {self._spec.namespace}: "
                f"HTTP {exc.status} {exc.reason}",
                hint="check the names in the plan and that cutover's role may get, update "
                "and create Secrets/ConfigMaps there (and patch the Deployments to restart)",
            ) from None
        except OSError as exc:
            raise StepFailed(
                f"repoint {self.name}: {what}: the API server did not answer: {exc}",
                hint="check that the cluster is reachable from here",
            ) from None

    # -- reading and writing one key ------------------------------------------------------------

    def _read(self, name: str) -> Any:
        """The object (a V1Secret or V1ConfigMap), or None when it does not exist."""
        read = (
            self._core.read_namespaced_secret
            if self._secret
            else self._core.read_namespaced_config_map
        )
        try:
            return self._call(f"read {self._shown}", read, name, self._spec.namespace)
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise StepFailed(
                f"repoint {self.name}: read {self._shown}: HTTP {exc.status} {exc.reason}",
                hint="run it again",
            ) from None

    def _value(self, found: Any) -> str | None:
        data = found.data or {}
        raw = data.get(self._spec.key)
        if raw is None:
            return None
        return base64.b64decode(raw).decode() if self._secret else str(raw)

    def _set(self, found: Any, value: str) -> None:
        data = dict(found.data or {})
        data[self._spec.key] = base64.b64encode(value.encode()).decode() if self._secret else value
        found.data = data

    def _write(self, found: Any, *, create: bool) -> None:
        """Replace with found's resourceVersion (409 when stale), or create."""
        ns, name = self._spec.namespace, found.metadata.name
        if self._secret:
            if create:
                self._call("create", self._core.create_namespaced_secret, ns, found)
            else:
                self._call("replace", self._core.replace_namespaced_secret, name, ns, found)
        elif create:
            self._call("create", self._core.create_namespaced_config_map, ns, found)
        else:
            self._call("replace", self._core.replace_namespaced_config_map, name, ns, found)

    def _wanted(self, current: str | None, previous: str | None, server: Server) -> str:
        kind = self._spec.value
        if previous is not None and names(previous, kind, server):
            return previous  # going back: the old value exactly, as it was
        try:
            return build_value(kind, current, server)
        except PreconditionFailed as exc:
            raise PreconditionFailed(
                f"repoint {self.name}: {self._shown} key {self._spec.key}: {exc.message}",
                hint=exc.hint,
            ) from None

    def _previous(self) -> tuple[Any, str | None]:
        companion = self._read(companion_name(self._object))
        return companion, (None if companion is None else self._value(companion))

    def _keep_previous(self, companion: Any, value: str | None, at: str) -> None:
        """Write the value before the change, and when it changed, on the companion."""
        if value is None:
            return
        create = companion is None
        if create:
            meta = client.V1ObjectMeta(
                name=companion_name(self._object),
                labels={"app.kubernetes.io/managed-by": "cutover"},
            )
            companion = (
                client.V1Secret(metadata=meta, data={})
                if self._secret
                else client.V1ConfigMap(metadata=meta, data={})
            )
        self._set(companion, value)
        companion.metadata.annotations = {
            **(companion.metadata.annotations or {}),
            CHANGED_AT: at,
        }
        try:
            self._write(companion, create=create)
        except ApiException as exc:
            raise StepFailed(
                f"repoint {self.name}: cannot keep the previous value on "
                f"{companion_name(self._object)}: HTTP {exc.status} {exc.reason}",
                hint="run it again; nothing was changed",
            ) from None

    def previous_forgotten(self) -> bool:
        """No old value of the key is kept on the companion."""
        return self._previous()[1] is None

    def forget_previous(self, *, dry_run: bool) -> Sequence[Change]:
        """The key's old value removed from the companion, the companion deleted once empty."""
        companion, previous = self._previous()
        if previous is None:
            return []
        name = companion_name(self._object)
        kind = "secret" if self._secret else "configmap"
        change = Change(
            f"repoint {self.name}", f"{kind}/{name}: the previous value of {self._spec.key} removed"
        )
        if dry_run:
            return [change]
        data = {k: v for k, v in (companion.data or {}).items() if k != self._spec.key}
        try:
            if data:
                companion.data = data
                self._write(companion, create=False)
            elif self._secret:
                self._call(
                    "delete", self._core.delete_namespaced_secret, name, self._spec.namespace
                )
            else:
                self._call(
                    "delete", self._core.delete_namespaced_config_map, name, self._spec.namespace
                )
        except ApiException as exc:
            if exc.status != 404:  # 404: gone already
                raise StepFailed(
                    f"repoint {self.name}: cannot remove the previous value from {kind}/{name}: "
                    f"HTTP {exc.status} {exc.reason}",
                    hint="run cleanup again",
                ) from None
        return [change]

    def _describe(self, value: str) -> str:
        if self._secret:
            return f"{self._shown}: key {self._spec.key} set (value not shown)"
        return redact(f"{self._shown}: {self._spec.key}={value}")

    # -- the repoint -----------------------------------------------------------------------

    def problems(self, target: Server) -> list[str]:
        """The object and its key are read and the new value built, as the switch will."""
        try:
            found = self._read(self._object)
            if found is None:
                return [
                    f"repoint {self.name}: {self._shown} does not exist in namespace "
                    f"{self._spec.namespace}"
                ]
            self._wanted(self._value(found), self._previous()[1], target)
        except CutoverError as exc:
            return [exc.message]
        return []

    def points_to(self, server: Server) -> bool:
        """The key names `server`, and each Deployment to restart was restarted since."""
        found = self._read(self._object)
        if found is None:
            return False
        companion, previous = self._previous()
        current = self._value(found)
        if current is None or current != self._wanted(current, previous, server):
            return False
        return not self._to_restart(companion)

    def point_to(self, server: Server, *, dry_run: bool) -> Sequence[Change]:
        """Write the key (compare-and-set), then restart the Deployments that read it."""
        for _ in range(CONFLICT_ATTEMPTS):
            found = self._read(self._object)
            if found is None:
                raise PreconditionFailed(
                    f"repoint {self.name}: {self._shown} does not exist in namespace "
                    f"{self._spec.namespace}",
                    hint="check repoint[].kubernetes in the plan",
                )
            companion, previous = self._previous()
            current = self._value(found)
            wanted = self._wanted(current, previous, server)
            changes = [Change(f"repoint {self.name}", self._describe(wanted))]
            if dry_run:
                return [*changes, *self._restart_changes()]
            if current == wanted:
                return [*changes, *self._restart(companion)]
            at = datetime.now(UTC).isoformat(timespec="seconds")
            self._keep_previous(companion, current, at)
            self._set(found, wanted)
            try:
                self._write(found, create=False)
            except ApiException as exc:
                if exc.status == 409:
                    log.info(
                        "repoint %s: %s changed meanwhile: reading it again", self.name, self._shown
                    )
                    continue
                raise StepFailed(
                    f"repoint {self.name}: write {self._shown}: HTTP {exc.status} {exc.reason}",
                    hint="run it again",
                ) from None
            log.info("repoint %s: %s key %s written", self.name, self._shown, self._spec.key)
            companion, _ = self._previous()
            return [*changes, *self._restart(companion)]
        raise StepFailed(
            f"repoint {self.name}: {self._shown} changed under every one of "
            f"{CONFLICT_ATTEMPTS} attempts to write it",
            hint="something rewrites it continually (a controller, a sync job); stop it, then "
            "run again",
        )

    # -- restarts --------------------------------------------------------------------------------

    def _restart_changes(self) -> list[Change]:
        return [
            Change(f"repoint {self.name}", f"deployment/{d}: rollout restart")
            for d in self._spec.restart
        ]

    def _to_restart(self, companion: Any) -> list[str]:
        """The Deployments not restarted since the key last changed."""
        if not self._spec.restart or companion is None:
            return []
        changed = (companion.metadata.annotations or {}).get(CHANGED_AT)
        if changed is None:
            return []
        apps = client.AppsV1Api(self._core.api_client)
        late = []
        for name in self._spec.restart:
            found = self._call(
                f"read deployment/{name}",
                apps.read_namespaced_deployment,
                name,
                self._spec.namespace,
            )
            meta = found.spec.template.metadata if found.spec is not None else None
            restarted = ((meta and meta.annotations) or {}).get(RESTARTED_AT, "")
            if restarted < changed:  # both ISO 8601 in UTC: they sort as times
                late.append(name)
        return late

    def _restart(self, companion: Any) -> list[Change]:
        apps = client.AppsV1Api(self._core.api_client)
        changes = []
        for name in self._to_restart(companion):
            at = datetime.now(UTC).isoformat(timespec="seconds")
            body = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: at}}}}}
            self._call(
                f"restart deployment/{name}",
                apps.patch_namespaced_deployment,
                name,
                self._spec.namespace,
                body,
                _content_type=MERGE_PATCH,
            )
            changes.append(Change(f"repoint {self.name}", f"deployment/{name}: rollout restart"))
        return changes
