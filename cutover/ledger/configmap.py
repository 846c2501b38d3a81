"""A ledger store for a controller that runs in a cluster: ConfigMaps and a Lease.

Each document of a move is one ConfigMap, `cutover-<move>-<kind>` (`_` made `-`),
its JSON under the key `document.json`, replaced with the `resourceVersion` this
store last saw (a 409 Conflict reads it again; the lock holder is the only writer
of the ledger, so a conflict is an operator's edit, and the ledger's own view wins). The
move's lock is a coordination.k8s.io/v1 Lease, `cutover-<move>`: its holder renews
it every third of `lease_duration`; a holder that stopped renewing for longer is
taken to be dead and its Lease is taken over, as a killed controller's flock is
released by the kernel.

Between two writes of the document, the ledger's writes are appended to a log
under the key `log.jsonl` of the same ConfigMap (a line each, see
cutover.ledger.base.Store): an append updates the ConfigMap as this store last
saw it, without reading it first or converting and gzipping the document again;
one that meets a conflict is not tried again: the Journal writes the document
whole instead. Past `FOLD_AT` bytes of log the Journal writes the document whole
again, which removes the log.

A ConfigMap holds at most 1 MiB. A document over `PLAIN_UP_TO` is kept gzipped
under `binaryData` (`document.json.gz`): a ledger's JSON shrinks about twenty
times, so the records of a move of about 1,500 databases fit (uncompressed, about
130). A document that does not fit even so (with room for the log) is refused
with its size, before the API server would refuse it, and the one stored stays.
"""

import base64
import binascii
import gzip
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cutover.errors import LedgerLocked, StepFailed, UsageError
from cutover.kube import api_client
from cutover.ledger.base import actor, replay
from cutover.plan import ConfigMapLedger

log = logging.getLogger(__name__)

T = TypeVar("T")
KEY = "document.json"
PACKED = "document.json.gz"
LIMIT = 1024 * 1024  # what a ConfigMap holds, its data and binaryData together
PLAIN_UP_TO = 256 * 1024  # a document up to this stays plain JSON, readable with kubectl
LOG = "log.jsonl"
FOLD_AT = 32 * 1024  # each append sends the log whole: it is folded in at this size
CONFLICT_ATTEMPTS = 5


def _k8s_name(text: str) -> str:
    return text.replace("_", "-").lower()[:253]


class ConfigMapStore:
    """One document of a move in a ConfigMap; the move's lock in a Lease."""

    def __init__(self, spec: ConfigMapLedger, move: str, *, kind: str = "ledger") -> None:
        self._spec = spec
        self.name = _k8s_name(f"cutover-{move}-{kind}")
        self.lease = _k8s_name(f"cutover-{move}")
        self._api: client.ApiClient | None = None
        # The ConfigMap as the last read or write left it: the next write starts from it
        # (a 409 Conflict reads it again). Unseen: read it first.
        self._map: client.V1ConfigMap | None = None
        self._seen = False
        self.found_log = False  # see Store

    def _client(self) -> client.ApiClient:
        if self._api is None:
            self._api = api_client(
                self._spec,
                what="the ledger",
                hint="give ledger.configmap.kubeconfig in the plan, or run cutover in a pod "
                "with a service account",
            )
        return self._api

    @property
    def _core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self._client())

    @property
    def _leases(self) -> client.CoordinationV1Api:
        return client.CoordinationV1Api(self._client())

    def describe(self) -> str:
        """Where the document is: `configmap NAMESPACE/NAME`."""
        return f"configmap {self._spec.namespace}/{self.name}"

    def _call(self, what: str, call: Callable[..., T], *args: Any) -> T:
        try:
            return call(*args, _request_timeout=self._spec.timeout)
        except ApiException as exc:
            if exc.status in (404, 409):
                raise
            raise StepFailed(
                f"the ledger: {what} {self.describe()}: HTTP {exc.status} {exc.reason}",
                hint="check that cutover's role may get, create and update ConfigMaps and "
                "Leases in that namespace",
            ) from None
        except OSError as exc:
            raise StepFailed(
                f"the ledger: {what} {self.describe()}: the API server did not answer: {exc}",
                hint="check that the cluster is reachable from here",
            ) from None

    def _read_map(self) -> client.V1ConfigMap | None:
        try:
            found = self._call(
                "read", self._core.read_namespaced_config_map, self.name, self._spec.namespace
            )
        except ApiException as exc:
            if exc.status != 404:
                raise StepFailed(
                    f"the ledger: read {self.describe()}: HTTP {exc.status}", hint="run it again"
                ) from None
            found = None
        self._map, self._seen = found, True
        return found

    def read(self) -> dict[str, Any] | None:
        """The document with its log applied, or None before the first write."""
        self.found_log = False
        found = self._read_map()
        if found is None:
            return None
        packed = (found.binary_data or {}).get(PACKED)
        text = (found.data or {}).get(KEY)
        try:
            if packed is not None:
                text = gzip.decompress(base64.b64decode(packed)).decode()
            if text is None:
                return None
            data: dict[str, Any] = json.loads(text)
        except (ValueError, OSError, EOFError, binascii.Error) as exc:
            raise UsageError(
                f"the ledger {self.describe()} cannot be read: {exc}",
                hint="restore it from a backup, or delete it to start the move's record anew",
            ) from None
        lines = [line.encode() for line in (found.data or {}).get(LOG, "").splitlines()]
        self.found_log = bool(lines)
        try:
            return replay(data, lines, where=f"{self.describe()} key {LOG}")
        except ValueError as exc:
            raise UsageError(
                f"the ledger's log cannot be read: {exc}",
                hint=f"remove the key {LOG} to read the document alone: the records written "
                "since the document was last written whole are then lost",
            ) from None

    def write(self, text: str, *, sync: bool = True) -> None:
        """Replace the document with `text` (JSON; gzipped over `PLAIN_UP_TO`), the log
        removed; create the ConfigMap the first time.

        Durable once the API server answers, `sync` or not.
        """
        data, binary = self._pack(text)

        def whole(found: client.V1ConfigMap | None) -> client.V1ConfigMap:
            if found is None:
                meta = client.V1ObjectMeta(
                    name=self.name, labels={"app.kubernetes.io/managed-by": "cutover"}
                )
                return client.V1ConfigMap(metadata=meta, data=data, binary_data=binary)
            # The document in one form, the other and the log removed; other keys kept.
            found.data = {**_without(found.data, KEY, LOG), **data}
            found.binary_data = {**_without(found.binary_data, PACKED), **binary}
            return found

        self._change("write", whole)

    def append(self, line: str, *, sync: bool) -> None:
        """Add `line` to the log: one update, durable once the API server answers. The
        ConfigMap changed or deleted meanwhile (a 409, a 404) raises: what it holds now
        may not be the document the log follows."""

        def appended(found: client.V1ConfigMap | None) -> client.V1ConfigMap:
            if found is None:
                raise StepFailed(f"the ledger {self.describe()} was deleted", hint="")
            entries = found.data or {}
            found.data = {**entries, LOG: entries.get(LOG, "") + line}
            return found

        self._change("append to", appended, attempts=1)

    def sync(self) -> None:
        """Nothing to wait for: a write is durable once the API server answers."""

    def fold_at(self) -> int:
        """Each append sends the whole log: it is written into the document at FOLD_AT."""
        return FOLD_AT

    def _change(
        self,
        what: str,
        change: Callable[[client.V1ConfigMap | None], client.V1ConfigMap],
        *,
        attempts: int = CONFLICT_ATTEMPTS,
    ) -> None:
        """Create or replace the ConfigMap as `change` makes it from the one last seen, with
        that one's `resourceVersion`. The lock holder is the only writer of the ledger: a
        409 Conflict (or a 404, deleted) is an operator's edit, read again, and the
        ledger's own view wins."""
        ns = self._spec.namespace
        found = self._map if self._seen else self._read_map()
        for _ in range(attempts):
            body = change(found)
            try:
                if found is None:
                    made = self._call("create", self._core.create_namespaced_config_map, ns, body)
                else:
                    made = self._call(
                        "replace", self._core.replace_namespaced_config_map, self.name, ns, body
                    )
                self._map = made
                return
            except ApiException as exc:  # 404 or 409, see _call
                if exc.status == 404 and found is None:
                    raise StepFailed(
                        f"the ledger: {what} {self.describe()}: its namespace is not found",
                        hint="check ledger.configmap.namespace in the plan",
                    ) from None
                log.info("the ledger %s changed meanwhile: writing again", self.describe())
                found = self._read_map()
        raise StepFailed(
            f"the ledger: {self.describe()} changed meanwhile, {attempts} time(s) in a row",
            hint="something else writes it; stop that, then run again",
        )

    def _pack(self, text: str) -> tuple[dict[str, str], dict[str, str]]:
        """The document as the ConfigMap's data or, gzipped, its binaryData."""
        raw = text.encode()
        if len(raw) <= PLAIN_UP_TO:
            return {KEY: text}, {}
        packed = gzip.compress(raw, compresslevel=1, mtime=0)
        if len(packed) > LIMIT - len(PACKED) - len(LOG) - FOLD_AT * 2:  # the log's room
            raise StepFailed(
                f"the ledger {self.describe()} would hold {len(raw) / 2**20:.1f} MiB, "
                f"{len(packed) / 2**20:.1f} MiB gzipped: over the 1 MiB a ConfigMap holds, "
                "less 64 KiB for its log (the document stored is kept)",
                hint="split the move into plans of fewer databases, or keep its ledger in a "
                "file: no ledger.configmap, and state_dir on a persistent volume",
            )
        return {}, {PACKED: base64.b64encode(packed).decode()}

    # -- the lock ----------------------------------------------------------------------------

    def _holder(self, lease: client.V1Lease) -> str | None:
        """Who holds the Lease now (None: nobody, or a holder that stopped renewing)."""
        spec = lease.spec
        if spec is None or not spec.holder_identity or spec.renew_time is None:
            return None
        duration = timedelta(seconds=spec.lease_duration_seconds or self._spec.lease_duration)
        renewed = spec.renew_time
        if renewed.tzinfo is None:
            renewed = renewed.replace(tzinfo=UTC)
        return spec.holder_identity if renewed + duration > datetime.now(UTC) else None

    def _lease_spec(self, me: str | None, acquired: datetime | None) -> client.V1LeaseSpec:
        now = datetime.now(UTC)
        return client.V1LeaseSpec(
            holder_identity=me,
            lease_duration_seconds=int(self._spec.lease_duration),
            acquire_time=acquired,
            renew_time=now if me else None,
        )

    def _acquire(self, me: str) -> datetime:
        ns, acquired = self._spec.namespace, datetime.now(UTC)
        body = client.V1Lease(
            metadata=client.V1ObjectMeta(name=self.lease), spec=self._lease_spec(me, acquired)
        )
        try:
            self._call("create the lease", self._leases.create_namespaced_lease, ns, body)
            return acquired
        except ApiException as exc:
            if exc.status != 409:
                raise
        found = self._expired_or_ours(me)
        found.spec = self._lease_spec(me, acquired)  # free, or its holder dead: taken over
        try:
            self._call(
                "take the lease", self._leases.replace_namespaced_lease, self.lease, ns, found
            )
        except ApiException:  # someone took it between our read and write
            raise LedgerLocked(
                f"this move's lease {ns}/{self.lease} was just taken by another run",
                hint="wait for it to finish",
            ) from None
        return acquired

    def _expired_or_ours(self, me: str) -> client.V1Lease:
        """The Lease once nobody else holds it: a holder that renews it is refused at once.

        A controller killed with its Lease held (a Job's pod deleted, a node lost)
        is followed by a new pod within seconds, before the Lease expired. The new
        run waits, up to one `lease_duration`, for a renewal: none means the holder
        is dead and its Lease is taken over; one means it runs, and is named.
        """
        ns, beat = self._spec.namespace, min(1.0, self._spec.lease_duration / 6)
        found = self._call("read the lease", self._leases.read_namespaced_lease, self.lease, ns)
        holder = self._holder(found)
        if holder is None or holder == me:
            return found
        renewed = found.spec.renew_time if found.spec else None
        log.warning(
            "this move's lease %s/%s is held by %s: waiting up to %g s to see it renewed "
            "(a run that goes on) or expire (a run that was killed)",
            ns,
            self.lease,
            holder,
            self._spec.lease_duration,
        )
        deadline = time.monotonic() + self._spec.lease_duration + beat
        while holder is not None and holder != me:
            now_renewed = found.spec.renew_time if found.spec else None
            if now_renewed != renewed or time.monotonic() > deadline:
                raise LedgerLocked(
                    f"this move is being run by {holder} (lease {ns}/{self.lease})",
                    hint="wait for it to finish; a holder that stops renewing the lease loses "
                    f"it after {self._spec.lease_duration:g} s",
                )
            time.sleep(beat)
            found = self._call("read", self._leases.read_namespaced_lease, self.lease, ns)
            holder = self._holder(found)
        return found

    def _renew(self, me: str, acquired: datetime, stop: threading.Event) -> None:
        ns = self._spec.namespace
        while not stop.wait(self._spec.lease_duration / 3):
            try:
                found = self._call("read", self._leases.read_namespaced_lease, self.lease, ns)
                if found.spec is None or found.spec.holder_identity != me:
                    log.error("the lease %s/%s was taken by another run", ns, self.lease)
                    return
                found.spec = self._lease_spec(me, acquired)
                self._call("renew", self._leases.replace_namespaced_lease, self.lease, ns, found)
            except (ApiException, StepFailed) as exc:  # try again at the next beat
                log.warning("the lease %s/%s was not renewed: %s", ns, self.lease, exc)

    def _release(self, me: str) -> None:
        ns = self._spec.namespace
        try:
            found = self._call("read", self._leases.read_namespaced_lease, self.lease, ns)
            if found.spec is not None and found.spec.holder_identity == me:
                found.spec = self._lease_spec(None, None)
                self._call("release", self._leases.replace_namespaced_lease, self.lease, ns, found)
        except (ApiException, StepFailed) as exc:  # it expires by itself
            log.warning("the lease %s/%s was not released: %s", ns, self.lease, exc)

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the move's Lease, renewed while held, or fail naming who holds it."""
        me = actor()
        acquired = self._acquire(me)
        stop = threading.Event()
        renewing = threading.Thread(
            target=self._renew, args=(me, acquired, stop), name="cutover-lease", daemon=True
        )
        renewing.start()
        try:
            yield
        finally:
            stop.set()
            renewing.join(timeout=self._spec.timeout)
            self._release(me)


def _without(entries: dict[str, Any] | None, *keys: str) -> dict[str, Any]:
    return {k: v for k, v in (entries or {}).items() if k not in keys}
