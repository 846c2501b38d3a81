"""A writer made of Kubernetes workloads: Deployments and StatefulSets scaled to zero
through their `scale` subresource and back, CronJobs suspended and resumed.

The stop records each workload's replica count, each CronJob's suspension and the
target of each HorizontalPodAutoscaler (autoscaling/v2) of the workloads before it
changes any (see cutover/writers/recorded.py); the start restores from that record,
never from the live counts, which are zero by then.

An autoscaler is held by moving its `scaleTargetRef` to a name no workload has
(`cutover-held-<name>`): it then scales nothing, whatever its metrics say, and its
own settings (minReplicas, maxReplicas, behavior) stay untouched. minReplicas cannot
be pinned at zero, and a deleted autoscaler would lose its status and identity; the
start puts the recorded target back exactly, after the replicas are ready.

The Jobs a suspended CronJob already started run on; the drain waits for them, or,
with `end_running_jobs`, the stop deletes them with propagationPolicy Background (a
Job's own default, Orphan, would leave its pods running) and the drain waits for
their pods, which end within their grace period.
"""

import dataclasses
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from cutover import wait
from cutover.errors import StepFailed
from cutover.kube import api_client
from cutover.plan import KubernetesWriter as KubernetesSpec
from cutover.selectors import Selector, from_label_selector, render_selector
from cutover.steps import Change
from cutover.writers import Records
from cutover.writers.recorded import Autoscaler, CronJob, Kind, Recorded, Workload

log = logging.getLogger(__name__)

T = TypeVar("T")
MERGE_PATCH = "application/merge-patch+json"
HELD_PREFIX = "cutover-held-"
READY_POLL_SECONDS = 0.2
IN_BACKGROUND = client.V1DeleteOptions(propagation_policy="Background")


def held_name(target: str) -> str:
    """The name a held autoscaler targets instead of `target`: no workload has it."""
    return (HELD_PREFIX + target)[:253].rstrip("-.")


class KubernetesWriter:
    """Deployments, StatefulSets and CronJobs of one namespace, stopped and started as one."""

    def __init__(
        self,
        name: str,
        spec: KubernetesSpec,
        *,
        records: Records,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.name = name
        self._spec = spec
        self._records = records
        self._clock = clock
        self._sleep = sleep
        self._api: client.ApiClient | None = None
        self._selectors: dict[Workload, Selector] = {}
        self._waiting: list[str] = []  # what the last is_drained saw still running

    # -- the API ---------------------------------------------------------------------------

    def _client(self) -> client.ApiClient:
        if self._api is None:
            self._api = api_client(self._spec, what=f"writer {self.name}")
        return self._api

    @property
    def _apps(self) -> client.AppsV1Api:
        return client.AppsV1Api(self._client())

    @property
    def _batch(self) -> client.BatchV1Api:
        return client.BatchV1Api(self._client())

    def _call(self, what: str, call: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """One API call, bounded by the plan's timeout; a refusal as a StepFailed."""
        try:
            return call(*args, _request_timeout=self._spec.timeout, **kwargs)
        except ApiException as exc:
            raise StepFailed(
                f"writer {self.name}: {what} in namespace {self._spec.namespace}: "
                f"HTTP {exc.status} {exc.reason}",
                hint="check the names in the plan and that cutover's role may do this "
                "(get, list, patch on the workloads and their scale, autoscalers, "
                "cronjobs; list on jobs and pods; delete on jobs with end_running_jobs)",
            ) from None
        except OSError as exc:  # urllib3's errors are OSErrors: refused, timed out
            raise StepFailed(
                f"writer {self.name}: {what}: the API server did not answer: {exc}",
                hint="check that the cluster is reachable from here",
            ) from None

    # -- what the writer is made of ----------------------------------------------------------

    def _names(self) -> tuple[list[Workload], list[str]]:
        """The workloads (replicas unknown yet) and CronJobs the plan names or selects."""
        spec, ns = self._spec, self._spec.namespace
        deployments, statefulsets, cronjobs = (
            list(spec.deployments),
            list(spec.statefulsets),
            list(spec.cronjobs),
        )
        if spec.selector is not None:
            chosen = {"label_selector": spec.selector}
            listers: tuple[tuple[list[str], Callable[..., Any]], ...] = (
                (deployments, self._apps.list_namespaced_deployment),
                (statefulsets, self._apps.list_namespaced_stateful_set),
                (cronjobs, self._batch.list_namespaced_cron_job),
            )
            for found, lister in listers:
                items = self._call(f"list by {spec.selector}", lister, ns, **chosen).items
                found += [n for n in map(_name, items) if n not in found]
        workloads = [Workload(Kind.DEPLOYMENT, n, 0) for n in deployments] + [
            Workload(Kind.STATEFUL_SET, n, 0) for n in statefulsets
        ]
        return workloads, cronjobs

    def _read_scale(self, workload: Workload) -> int:
        read = (
            self._apps.read_namespaced_deployment_scale
            if workload.kind is Kind.DEPLOYMENT
            else self._apps.read_namespaced_stateful_set_scale
        )
        scale = self._call(f"read {workload.describe()}/scale", read, workload.name, self._ns)
        return int(scale.spec.replicas or 0) if scale.spec is not None else 0

    @property
    def _ns(self) -> str:
        return self._spec.namespace

    def _observe(self) -> Recorded:
        """The state to record: counts, suspensions and autoscaler targets as they are now."""
        named, cronjobs = self._names()
        workloads = tuple(Workload(w.kind, w.name, self._read_scale(w)) for w in named)
        wanted = {(w.kind.value, w.name) for w in workloads}
        hpas = self._call(
            "list horizontalpodautoscalers",
            client.AutoscalingV2Api(self._client()).list_namespaced_horizontal_pod_autoscaler,
            self._ns,
        ).items
        autoscalers = tuple(
            Autoscaler(_name(h), ref.api_version or "apps/v1", ref.kind, ref.name)
            for h in hpas
            if (ref := h.spec.scale_target_ref) is not None and (ref.kind, ref.name) in wanted
        )
        suspended = tuple(
            CronJob(
                name,
                bool(
                    self._call(
                        f"read cronjob/{name}", self._batch.read_namespaced_cron_job, name, self._ns
                    ).spec.suspend
                ),
            )
            for name in cronjobs
        )
        return Recorded(workloads, autoscalers, suspended)

    def problems(self) -> list[str]:
        """What a switch would fail on, read only: the workloads, their scale, the autoscalers."""
        try:
            found = self._observe()
        except StepFailed as exc:
            return [exc.message]
        if not found.workloads and not found.cronjobs:
            return [
                f"writer {self.name}: no Deployment, StatefulSet or CronJob of the plan is in "
                f"namespace {self._ns}"
            ]
        return []

    def recorded(self) -> Recorded | None:
        """The state recorded by the last stop, if any."""
        data = self._records.get(self.name)
        if data is None:
            return None
        try:
            return Recorded.from_dict(data)
        except ValueError as exc:
            raise StepFailed(
                f"writer {self.name}: its record in the ledger is damaged: {exc}",
                hint="restore the writers document beside the ledger from a backup, or scale "
                "the workloads back by hand",
            ) from None

    # -- the changes -----------------------------------------------------------------------

    def _scale(self, workload: Workload, replicas: int) -> None:
        patch = (
            self._apps.patch_namespaced_deployment_scale
            if workload.kind is Kind.DEPLOYMENT
            else self._apps.patch_namespaced_stateful_set_scale
        )
        self._call(
            f"scale {workload.describe()}",
            patch,
            workload.name,
            self._ns,
            {"spec": {"replicas": replicas}},
            _content_type=MERGE_PATCH,
        )

    def _retarget(self, autoscaler: Autoscaler, target: str) -> None:
        body = {
            "spec": {
                "scaleTargetRef": {
                    "apiVersion": autoscaler.target_api_version,
                    "kind": autoscaler.target_kind,
                    "name": target,
                }
            }
        }
        self._call(
            f"patch horizontalpodautoscaler/{autoscaler.name}",
            client.AutoscalingV2Api(self._client()).patch_namespaced_horizontal_pod_autoscaler,
            autoscaler.name,
            self._ns,
            body,
            _content_type=MERGE_PATCH,
        )

    def _suspend(self, cronjob: str, *, suspended: bool) -> None:
        self._call(
            f"patch cronjob/{cronjob}",
            self._batch.patch_namespaced_cron_job,
            cronjob,
            self._ns,
            {"spec": {"suspend": suspended}},
            _content_type=MERGE_PATCH,
        )

    def _running_jobs(self, record: Recorded) -> list[str]:
        """The active Jobs of the recorded CronJobs (suspended by the stop), by name."""
        if not record.cronjobs:
            return []
        suspended = {c.name for c in record.cronjobs}
        jobs = self._call("list jobs", self._batch.list_namespaced_job, self._ns).items
        return [
            _name(j)
            for j in jobs
            if (j.status is not None and (j.status.active or 0) > 0)
            and any(
                o.kind == "CronJob" and o.name in suspended
                for o in ((j.metadata and j.metadata.owner_references) or [])
            )
        ]

    def _delete_job(self, job: str, **kwargs: Any) -> bool:
        """Delete a Job, its pods in the background; False if it was gone already."""
        try:
            self._batch.delete_namespaced_job(job, self._ns, body=IN_BACKGROUND, **kwargs)
        except ApiException as exc:
            if exc.status == 404:  # gone since it was listed (a run before, its TTL): as wanted
                return False
            raise
        return True

    def _end_jobs(self, record: Recorded, *, dry_run: bool) -> tuple[Recorded, list[Change]]:
        """Delete the CronJobs' running Jobs, recorded first so the drain waits for their pods."""
        running = self._running_jobs(record)
        changes = [
            Change(f"writer {self.name}", f"job/{j}: delete (propagationPolicy Background)")
            for j in running
        ]
        if dry_run or not running:
            return record, changes
        new = [j for j in running if j not in record.ended_jobs]
        if new:  # a stop run again keeps the Jobs the first one ended
            record = dataclasses.replace(record, ended_jobs=(*record.ended_jobs, *new))
            self._records.put(self.name, record.to_dict())
        for job in running:
            if not self._call(f"delete job/{job}", self._delete_job, job):
                log.info("writer %s: job/%s was already gone", self.name, job)
        return record, changes

    def stop(self, *, dry_run: bool) -> Sequence[Change]:
        """Record, hold the autoscalers, suspend the CronJobs (with `end_running_jobs`, end
        their running Jobs), scale the workloads to 0.

        A stop run again before the start (after a crash) keeps the first record.
        """
        record = self.recorded()
        if record is None or record.started:
            record = self._observe()
            if not dry_run:  # durable before anything changes
                self._records.put(self.name, record.to_dict())
        where = f"writer {self.name}"
        changes: list[Change] = []
        for a in record.autoscalers:
            held = held_name(a.target_name)
            changes.append(
                Change(
                    where,
                    f"horizontalpodautoscaler/{a.name}: scaleTargetRef {a.target_kind}/"
                    f"{a.target_name} -> {a.target_kind}/{held} (held)",
                )
            )
            if not dry_run:
                self._retarget(a, held)
        for c in record.cronjobs:
            changes.append(Change(where, f"cronjob/{c.name}: suspend"))
            if not dry_run:
                self._suspend(c.name, suspended=True)
        if self._spec.end_running_jobs:  # after the suspension: no new one starts meanwhile
            record, ended = self._end_jobs(record, dry_run=dry_run)
            changes += ended
        for w in record.workloads:
            changes.append(Change(where, f"{w.describe()}: replicas {w.replicas} -> 0"))
            if not dry_run:
                self._scale(w, 0)
        if not dry_run:
            log.info("writer %s: stopped, %s", self.name, _counts(record))
        return changes

    def _pod_selector(self, workload: Workload) -> Selector:
        """The workload's own pod selector (read once)."""
        if workload not in self._selectors:
            read: Callable[..., client.V1Deployment | client.V1StatefulSet] = (
                self._apps.read_namespaced_deployment
                if workload.kind is Kind.DEPLOYMENT
                else self._apps.read_namespaced_stateful_set
            )
            found = self._call(f"read {workload.describe()}", read, workload.name, self._ns)
            chosen = found.spec.selector
            expressions = [(e.key, e.operator, e.values) for e in (chosen.match_expressions or [])]
            self._selectors[workload] = from_label_selector(chosen.match_labels, expressions)
        return self._selectors[workload]

    def is_drained(self) -> bool:
        """No pod of a stopped workload or of an ended Job is left, and no Job of a
        suspended CronJob runs."""
        record = self.recorded()
        if record is None:
            return True
        waiting: list[str] = []
        for w in record.workloads:
            selector = render_selector(self._pod_selector(w))
            pods = self._call(
                f"list pods of {w.describe()}",
                client.CoreV1Api(self._client()).list_namespaced_pod,
                self._ns,
                label_selector=selector,
            ).items
            waiting += [f"pod/{_name(p)}" for p in pods]
        waiting += [f"job/{j}" for j in self._running_jobs(record)]
        # Deleted: their pods, terminating, still name them as owner. Found by that, not by
        # the Job's label: a cluster that sets another (or none) must not look drained.
        if record.ended_jobs:
            ended = set(record.ended_jobs)
            pods = self._call(
                "list pods of the ended jobs",
                client.CoreV1Api(self._client()).list_namespaced_pod,
                self._ns,
            ).items
            waiting += [
                f"pod/{_name(p)}"
                for p in pods
                if any(
                    o.kind == "Job" and o.name in ended
                    for o in ((p.metadata and p.metadata.owner_references) or [])
                )
            ]
        self._waiting = waiting
        return not waiting

    def draining(self) -> str:
        """What the last is_drained found still running."""
        shown = ", ".join(self._waiting[:10])
        more = len(self._waiting) - 10
        return shown + (f" and {more} more" if more > 0 else "")

    def _ready(self, workload: Workload) -> int:
        read: Callable[..., client.V1Deployment | client.V1StatefulSet] = (
            self._apps.read_namespaced_deployment
            if workload.kind is Kind.DEPLOYMENT
            else self._apps.read_namespaced_stateful_set
        )
        found = self._call(f"read {workload.describe()}", read, workload.name, self._ns)
        return int(found.status.ready_replicas or 0) if found.status is not None else 0

    def start(self, *, dry_run: bool) -> Sequence[Change]:
        """Back to the recorded counts (ready within ready_timeout), CronJobs as they were,
        autoscalers on their own targets again. Without a record there is nothing to undo."""
        record = self.recorded()
        if record is None and dry_run:  # a whole dry run: the stop would record these
            record = self._observe()
        if record is None:
            return []  # never stopped: nothing to undo
        where = f"writer {self.name}"
        changes = [
            Change(where, f"{w.describe()}: replicas -> {w.replicas} (recorded)")
            for w in record.workloads
        ]
        changes += [
            Change(where, f"cronjob/{c.name}: " + ("stay suspended" if c.suspended else "resume"))
            for c in record.cronjobs
        ]
        changes += [
            Change(
                where,
                f"horizontalpodautoscaler/{a.name}: scaleTargetRef -> {a.target_kind}/"
                f"{a.target_name}",
            )
            for a in record.autoscalers
        ]
        if dry_run:
            return changes
        for w in record.workloads:
            self._scale(w, w.replicas)
        for c in record.cronjobs:
            self._suspend(c.name, suspended=c.suspended)
        self._wait_ready(record)
        for a in record.autoscalers:  # last: the counts they scale from are the recorded ones
            self._retarget(a, a.target_name)
        started = dataclasses.replace(record, started=True)
        self._records.put(self.name, started.to_dict())
        log.info("writer %s: started, %s", self.name, _counts(record))
        return changes

    def _not_ready(self, record: Recorded) -> list[str]:
        late = []
        for w in record.workloads:
            ready = self._ready(w)
            if ready != w.replicas:
                late.append(f"{w.describe()} {ready} of {w.replicas} ready")
        return late

    def _wait_ready(self, record: Recorded) -> None:
        late: list[str] = []

        def ready() -> bool:
            late[:] = self._not_ready(record)
            return not late

        wait.until(
            ready,
            timeout=self._spec.ready_timeout,
            interval=READY_POLL_SECONDS,
            what=lambda: (
                f"writer {self.name}: not ready within "
                f"{self._spec.ready_timeout:g} s: {', '.join(late)}"
            ),
            hint="see `kubectl describe` of the workloads and their pods; running the same "
            "command again restores the recorded counts again",
            clock=self._clock,
            sleep=self._sleep,
        )

    def is_healthy(self) -> tuple[bool, str]:
        """Ready replicas equal the recorded counts (no record: nothing was stopped)."""
        record = self.recorded()
        if record is None:
            return True, ""
        late = self._not_ready(record)
        return (not late), ", ".join(late)


def _name(found: Any) -> str:
    """An object's name (every object the API lists has one)."""
    return str(found.metadata.name)


def _counts(record: Recorded) -> str:
    return ", ".join(f"{w.describe()} {w.replicas}" for w in record.workloads) or "no workloads"
