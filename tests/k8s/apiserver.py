"""A Kubernetes API server stand-in for the tests: the REST paths cutover's client uses.

A threaded stdlib HTTP server speaking JSON, reached through a real kubeconfig (server
http://127.0.0.1:PORT, a bearer token) by the real `kubernetes` client. It keeps
apps/v1 Deployments and StatefulSets (with their `scale` subresource),
autoscaling/v2 HorizontalPodAutoscalers, batch/v1 CronJobs and Jobs, v1 Pods,
Secrets and ConfigMaps, and coordination.k8s.io/v1 Leases. Every write gives the
object a new `resourceVersion`; a PUT or PATCH naming a stale one is a 409 Conflict.

A controller loop stands in for the controllers and the kubelet: each replica of a
Deployment or StatefulSet, and each Job, runs as a local process whose command, args
and env come from the pod template (env `valueFrom.secretKeyRef` and
`configMapKeyRef` resolved when the process starts). Scaling down ends processes
with SIGTERM, then SIGKILL after `terminationGracePeriodSeconds`; the pod is gone
once its process is. A changed pod template (a rollout restart) replaces the pods.
A Job's pod counts as active at once, and as ready once its process has run
READY_AFTER_SECONDS, as a replica does. A deleted object's pods end the same way,
as the garbage collector has them deleted, unless its propagationPolicy (the
body's, or the query's) is Orphan: a Job's default, as the real API server's for
batch/v1 Jobs (Foreground is taken as Background here).
An autoscaler whose target exists keeps the target's replicas within its
minReplicas and maxReplicas, as the real one keeps them from being scaled away.
"""

import base64
import contextlib
import copy
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import yaml

KINDS = {
    "deployments": ("apps/v1", "Deployment"),
    "statefulsets": ("apps/v1", "StatefulSet"),
    "horizontalpodautoscalers": ("autoscaling/v2", "HorizontalPodAutoscaler"),
    "cronjobs": ("batch/v1", "CronJob"),
    "jobs": ("batch/v1", "Job"),
    "pods": ("v1", "Pod"),
    "secrets": ("v1", "Secret"),
    "configmaps": ("v1", "ConfigMap"),
    "leases": ("coordination.k8s.io/v1", "Lease"),
}
WORKLOADS = {"Deployment": "deployments", "StatefulSet": "statefulsets"}
_PATH = re.compile(
    r"^/(?:api/(?P<core>v1)|apis/(?P<group>[^/]+)/(?P<version>[^/]+))"
    r"/namespaces/(?P<ns>[^/]+)/(?P<resource>[^/]+)(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$"
)
LOOP_SECONDS = 0.05
# A pod is ready once its process has run this long: its signal handlers are set by then.
READY_AFTER_SECONDS = 0.5


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# -- label selectors, parsed here on their own (not with cutover's parser, which they test) --


def _selector_terms(text: str) -> list[str]:
    terms, depth, current = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            terms.append(current.strip())
            current = ""
        else:
            current += char
    return [t for t in [*terms, current.strip()] if t]


def selects(selector: str, labels: dict[str, str]) -> bool:
    """Whether `labels` satisfy a labelSelector query parameter."""
    for term in _selector_terms(selector):
        if m := re.fullmatch(r"(\S+)\s+(in|notin)\s+\((.*)\)", term):
            values = {v.strip() for v in m[3].split(",")}
            has = m[1] in labels and labels[m[1]] in values
            if has != (m[2] == "in"):
                return False
        elif m := re.fullmatch(r"([^!=\s]+)\s*(==|=|!=)\s*(\S*)", term):
            equal = labels.get(m[1]) == m[3]
            if equal != (m[2] != "!="):
                return False
        elif term.startswith("!"):
            if term[1:].strip() in labels:
                return False
        elif term not in labels:
            return False
    return True


def _pod_selector(workload: dict[str, Any]) -> Callable[[dict[str, str]], bool]:
    chosen = workload["spec"]["selector"]
    wanted = chosen.get("matchLabels") or {}

    def match(labels: dict[str, str]) -> bool:
        if any(labels.get(k) != v for k, v in wanted.items()):
            return False
        for e in chosen.get("matchExpressions") or []:
            key, op, values = e["key"], e["operator"], e.get("values") or []
            if op == "In" and labels.get(key) not in values:
                return False
            if op == "NotIn" and labels.get(key) in values:
                return False
            if op == "Exists" and key not in labels:
                return False
            if op == "DoesNotExist" and key in labels:
                return False
        return True

    return match


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (strategic merge patches are taken as one: no lists patched)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def json_patch(target: dict[str, Any], ops: list[dict[str, Any]]) -> dict[str, Any]:
    """RFC 6902, the operations add, replace and remove."""
    result = copy.deepcopy(target)
    for op in ops:
        parts = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent: Any = result
        for part in parts[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent.setdefault(part, {})
        last = parts[-1]
        if op["op"] in ("add", "replace"):
            parent[last] = op["value"]
        elif op["op"] == "remove":
            del parent[last]
    return result


class ApiError(Exception):
    """An answer with a Status body."""

    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code, self.reason, self.message = code, reason, message


@dataclass
class Process:
    """A pod's process, and when it must be gone (after SIGTERM)."""

    popen: subprocess.Popen[bytes]
    kill_at: float | None = None
    started: float = field(default_factory=time.monotonic)


@dataclass
class Cluster:
    """The objects, the processes that run the pods, and the HTTP server in front."""

    workdir: Path
    token: str = field(default_factory=lambda: secrets.token_hex(16))
    objects: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path)
    # Called once, before the next PUT, PATCH or DELETE of (resource, name) is checked: a
    # concurrent writer's change (or deletion) landing between a client's read and its write.
    interfere: dict[tuple[str, str], Callable[[dict[str, Any]], None]] = field(default_factory=dict)
    _version: int = 0
    _lock: threading.RLock = field(default_factory=threading.RLock)
    _processes: dict[tuple[str, str], Process] = field(default_factory=dict)  # (ns, pod name)
    _stop: threading.Event = field(default_factory=threading.Event)
    _server: ThreadingHTTPServer | None = None
    _threads: list[threading.Thread] = field(default_factory=list)

    # -- life --------------------------------------------------------------------------------

    def start(self) -> "Cluster":
        cluster = self

        class Handler(_Handler):
            owner = cluster

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._threads = [
            threading.Thread(target=self._server.serve_forever, daemon=True),
            threading.Thread(target=self._control_loop, daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        for thread in self._threads:
            thread.join(timeout=5)
        with self._lock:
            for process in self._processes.values():
                _signal(process.popen, signal.SIGKILL)
            for process in self._processes.values():
                process.popen.wait(timeout=5)
            self._processes.clear()

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def kubeconfig(self, path: Path, *, namespace: str = "default") -> Path:
        """A kubeconfig file the real client reads: this server, its token."""
        path.write_text(
            yaml.safe_dump(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
                    "users": [{"name": "cutover", "user": {"token": self.token}}],
                    "contexts": [
                        {
                            "name": "standin",
                            "context": {
                                "cluster": "standin",
                                "user": "cutover",
                                "namespace": namespace,
                            },
                        }
                    ],
                    "current-context": "standin",
                }
            )
        )
        return path

    # -- the store ---------------------------------------------------------------------------

    def _bump(self, obj: dict[str, Any]) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)

    def create(self, resource: str, ns: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Store a new object (as a POST does)."""
        _validate(resource, obj)
        with self._lock:
            obj = copy.deepcopy(obj)
            api_version, kind = KINDS[resource]
            obj.setdefault("apiVersion", api_version)
            obj.setdefault("kind", kind)
            meta = obj.setdefault("metadata", {})
            name = meta.get("name") or (meta.get("generateName", "x-") + uuid.uuid4().hex[:5])
            meta["name"] = name
            if (resource, ns, name) in self.objects:
                raise ApiError(409, "AlreadyExists", f'{resource} "{name}" already exists')
            meta.update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=_now())
            meta.setdefault("generation", 1)
            if resource in ("deployments", "statefulsets"):
                obj["spec"].setdefault("replicas", 1)
                obj.setdefault("status", {"replicas": 0, "readyReplicas": 0})
            self._bump(obj)
            self.objects[(resource, ns, name)] = obj
            return copy.deepcopy(obj)

    def get(self, resource: str, ns: str, name: str) -> dict[str, Any]:
        """One object, as stored."""
        with self._lock:
            found = self.objects.get((resource, ns, name))
            if found is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
            return copy.deepcopy(found)

    def select(self, resource: str, ns: str, selector: str | None = None) -> list[dict[str, Any]]:
        """The objects of one kind in a namespace, by labelSelector."""
        with self._lock:
            return [
                copy.deepcopy(o)
                for (r, n, _), o in sorted(self.objects.items())
                if r == resource
                and n == ns
                and (not selector or selects(selector, o["metadata"].get("labels") or {}))
            ]

    def update(
        self, resource: str, ns: str, name: str, change: Callable[[dict[str, Any]], Any]
    ) -> dict[str, Any]:
        """Change a stored object in place (the controllers' writes, and the tests')."""
        with self._lock:
            obj = self.objects.get((resource, ns, name))
            if obj is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
            before = json.dumps(obj.get("spec"), sort_keys=True)
            change(obj)
            if json.dumps(obj.get("spec"), sort_keys=True) != before:
                obj["metadata"]["generation"] = obj["metadata"].get("generation", 1) + 1
            self._bump(obj)
            return copy.deepcopy(obj)

    def _write(
        self, resource: str, ns: str, name: str, new: dict[str, Any], *, keep_status: bool
    ) -> dict[str, Any]:
        """A client's PUT or PATCH: 409 when it names a resourceVersion that is not current."""
        _validate(resource, new)
        meddle = self.interfere.pop((resource, name), None)
        if meddle is not None:
            self.update(resource, ns, name, meddle)
        with self._lock:
            old = self.get(resource, ns, name)
            wanted = (new.get("metadata") or {}).get("resourceVersion")
            if wanted and wanted != old["metadata"]["resourceVersion"]:
                raise ApiError(
                    409,
                    "Conflict",
                    f'Operation cannot be fulfilled on {resource} "{name}": the object has '
                    "been modified; please apply your changes to the latest version and try again",
                )
            new = copy.deepcopy(new)
            meta = new.setdefault("metadata", {})
            for kept in ("name", "namespace", "uid", "creationTimestamp", "generation"):
                if kept in old["metadata"]:
                    meta[kept] = old["metadata"][kept]
            if keep_status and "status" in old:
                new["status"] = old["status"]
            return self.update(resource, ns, name, lambda o: (o.clear(), o.update(new)))

    def delete(
        self, resource: str, ns: str, name: str, *, propagation: str | None = None
    ) -> dict[str, Any]:
        """Remove an object; its pods terminate unless orphaned (a Job's default)."""
        policy = propagation or ("Orphan" if resource == "jobs" else "Background")
        if policy not in ("Orphan", "Background", "Foreground"):
            raise ApiError(400, "BadRequest", f"unknown propagationPolicy {policy}")
        with self._lock:
            found = self.objects.pop((resource, ns, name), None)
            if found is None:
                raise ApiError(404, "NotFound", f'{resource} "{name}" not found')
            if policy != "Orphan":
                for pod in self._pods_of(ns, found["metadata"]["uid"]):
                    if "deletionTimestamp" not in pod["metadata"]:
                        self._terminate(pod)
            return found

    # -- the REST API ------------------------------------------------------------------------

    def handle(self, method: str, url: str, body: Any, content_type: str) -> tuple[int, Any]:
        parts = urlsplit(url)
        self.requests.append((method, parts.path))
        m = _PATH.match(parts.path)
        if m is None or m["resource"] not in KINDS:
            raise ApiError(404, "NotFound", f"the server could not find {parts.path}")
        resource, ns, name, sub = m["resource"], m["ns"], m["name"], m["sub"]
        gv = m["core"] or f"{m['group']}/{m['version']}"
        if gv != KINDS[resource][0]:
            raise ApiError(404, "NotFound", f"{resource} is not served in {gv}")
        query = parse_qs(parts.query)
        if sub is not None:
            if sub != "scale" or resource not in ("deployments", "statefulsets"):
                raise ApiError(404, "NotFound", f"no subresource {sub}")
            return self._scale(method, resource, ns, name, body, content_type)
        if name is None:
            if method == "GET":
                items = self.select(resource, ns, (query.get("labelSelector") or [None])[0])
                return 200, {
                    "apiVersion": KINDS[resource][0],
                    "kind": KINDS[resource][1] + "List",
                    "metadata": {"resourceVersion": str(self._version)},
                    "items": items,
                }
            if method == "POST":
                return 201, self.create(resource, ns, body)
            raise ApiError(405, "MethodNotAllowed", method)
        if method == "GET":
            return 200, self.get(resource, ns, name)
        if method == "PUT":
            return 200, self._write(resource, ns, name, body, keep_status=True)
        if method == "PATCH":
            current = self.get(resource, ns, name)
            patched = (
                json_patch(current, body)
                if "json-patch" in content_type
                else merge_patch(current, body)
            )
            if "json-patch" in content_type or not (body.get("metadata") or {}).get(
                "resourceVersion"
            ):
                patched["metadata"].pop("resourceVersion", None)  # a patch without one: no CAS
            return 200, self._write(resource, ns, name, patched, keep_status=False)
        if method == "DELETE":
            meddle = self.interfere.pop((resource, name), None)
            if meddle is not None:
                self.update(resource, ns, name, meddle)
            policy = (body or {}).get("propagationPolicy") or (
                query.get("propagationPolicy") or [None]
            )[0]
            return 200, self.delete(resource, ns, name, propagation=policy)
        raise ApiError(405, "MethodNotAllowed", method)

    def _scale(
        self, method: str, resource: str, ns: str, name: str, body: Any, content_type: str
    ) -> tuple[int, Any]:
        if method in ("PUT", "PATCH"):
            if "json-patch" in content_type:
                replicas = json_patch({"spec": {}}, body)["spec"]["replicas"]
            else:
                replicas = body["spec"]["replicas"]
            self.update(resource, ns, name, lambda o: o["spec"].update(replicas=int(replicas)))
        elif method != "GET":
            raise ApiError(405, "MethodNotAllowed", method)
        workload = self.get(resource, ns, name)
        labels = workload["spec"]["selector"].get("matchLabels") or {}
        return 200, {
            "apiVersion": "autoscaling/v1",
            "kind": "Scale",
            "metadata": {
                "name": name,
                "namespace": ns,
                "uid": workload["metadata"]["uid"],
                "resourceVersion": workload["metadata"]["resourceVersion"],
            },
            "spec": {"replicas": workload["spec"]["replicas"]},
            "status": {
                "replicas": workload["status"].get("replicas", 0),
                "selector": ",".join(f"{k}={v}" for k, v in sorted(labels.items())),
            },
        }

    # -- the controllers and the kubelet -----------------------------------------------------

    def _control_loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.reconcile()
            except Exception as exc:  # keep the stand-in alive; the tests see the effects
                (self.workdir / "controller.errors").open("a").write(f"{exc!r}\n")
            self._stop.wait(LOOP_SECONDS)

    def reconcile(self) -> None:
        """One pass of every controller."""
        with self._lock:
            for key in [k for k in self.objects if k[0] == "horizontalpodautoscalers"]:
                self._autoscale(*key[1:])
            for key in [k for k in self.objects if k[0] in ("deployments", "statefulsets")]:
                self._replicate(*key)
            for key in [k for k in self.objects if k[0] == "jobs"]:
                self._run_job(*key[1:])
            self._reap()

    def _autoscale(self, ns: str, name: str) -> None:
        hpa = self.objects[("horizontalpodautoscalers", ns, name)]
        ref = hpa["spec"]["scaleTargetRef"]
        target = self.objects.get((WORKLOADS.get(ref["kind"], ""), ns, ref["name"]))
        if target is None:
            return  # a target that does not exist: the autoscaler scales nothing
        low, high = hpa["spec"].get("minReplicas", 1), hpa["spec"]["maxReplicas"]
        replicas = target["spec"]["replicas"]
        wanted = min(max(replicas, low), high)
        if wanted != replicas:
            target["spec"]["replicas"] = wanted
            self._bump(target)

    def _pods_of(self, ns: str, owner_uid: str) -> list[dict[str, Any]]:
        return [
            o
            for (r, n, _), o in self.objects.items()
            if r == "pods"
            and n == ns
            and any(ref["uid"] == owner_uid for ref in o["metadata"].get("ownerReferences", []))
        ]

    def _replicate(self, resource: str, ns: str, name: str) -> None:
        workload = self.objects[(resource, ns, name)]
        template = workload["spec"]["template"]
        revision = hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]
        pods = self._pods_of(ns, workload["metadata"]["uid"])
        live = [p for p in pods if "deletionTimestamp" not in p["metadata"]]
        for pod in live:
            if pod["metadata"]["labels"].get("pod-template-hash") != revision:
                self._terminate(pod)  # a rollout restart: every pod replaced
        live = [p for p in live if "deletionTimestamp" not in p["metadata"]]
        wanted = workload["spec"]["replicas"]
        for pod in sorted(live, key=lambda p: p["metadata"]["name"])[wanted:]:
            self._terminate(pod)
        taken = {p["metadata"]["name"] for p in pods}
        index = 0
        while len(live) < wanted:
            pod_name = (
                f"{name}-{index}"
                if resource == "statefulsets"
                else f"{name}-{revision}-{uuid.uuid4().hex[:5]}"
            )
            index += 1
            if pod_name in taken:
                continue
            live.append(self._start_pod(workload, ns, pod_name, revision))
        ready = sum(1 for p in live if self._ready(ns, p["metadata"]["name"]))
        status = {
            "replicas": len(live),
            "readyReplicas": ready,
            "availableReplicas": ready,
            "observedGeneration": workload["metadata"].get("generation", 1),
        }
        if workload.get("status") != status:
            workload["status"] = status
            self._bump(workload)

    def _owner(self, obj: dict[str, Any]) -> dict[str, Any]:
        return {
            "apiVersion": obj["apiVersion"],
            "kind": obj["kind"],
            "name": obj["metadata"]["name"],
            "uid": obj["metadata"]["uid"],
            "controller": True,
        }

    def _start_pod(
        self, owner: dict[str, Any], ns: str, pod_name: str, revision: str | None
    ) -> dict[str, Any]:
        template = owner["spec"]["template"]
        labels = dict(template.get("metadata", {}).get("labels") or {})
        if revision is not None:
            labels["pod-template-hash"] = revision
        if owner["kind"] == "Job":  # as the Job controller labels its pods
            labels["batch.kubernetes.io/job-name"] = labels["job-name"] = owner["metadata"]["name"]
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "labels": labels,
                "ownerReferences": [self._owner(owner)],
            },
            "spec": copy.deepcopy(template["spec"]),
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
        }
        stored = self.create("pods", ns, pod)
        container = template["spec"]["containers"][0]
        argv = [*container.get("command", []), *container.get("args", [])]
        env = {**os.environ, "POD_NAME": pod_name, "POD_NAMESPACE": ns}
        for var in container.get("env") or []:
            env[var["name"]] = self._env_value(ns, var)
        log = (self.workdir / f"{ns}.{pod_name}.log").open("ab")
        popen = subprocess.Popen(
            argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        log.close()
        self._processes[(ns, pod_name)] = Process(popen)
        return stored

    def _env_value(self, ns: str, var: dict[str, Any]) -> str:
        if "value" in var:
            return str(var["value"])
        source = var["valueFrom"]
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            data = self.objects[("secrets", ns, ref["name"])].get("data") or {}
            return base64.b64decode(data[ref["key"]]).decode()
        ref = source["configMapKeyRef"]
        return str(self.objects[("configmaps", ns, ref["name"])]["data"][ref["key"]])

    def _ready(self, ns: str, pod_name: str) -> bool:
        process = self._processes.get((ns, pod_name))
        return (
            process is not None
            and process.popen.poll() is None
            and time.monotonic() - process.started >= READY_AFTER_SECONDS
        )

    def _terminate(self, pod: dict[str, Any]) -> None:
        """SIGTERM now, SIGKILL after the grace period; the pod goes with its process."""
        meta = pod["metadata"]
        meta["deletionTimestamp"] = _now()
        self._bump(pod)
        process = self._processes.get((meta["namespace"], meta["name"]))
        if process is not None:
            grace = pod["spec"].get("terminationGracePeriodSeconds", 30)
            process.kill_at = time.monotonic() + grace
            _signal(process.popen, signal.SIGTERM)

    def _reap(self) -> None:
        for (ns, pod_name), process in list(self._processes.items()):
            if process.popen.poll() is None:
                if process.kill_at is not None and time.monotonic() >= process.kill_at:
                    _signal(process.popen, signal.SIGKILL)
                continue
            pod = self.objects.get(("pods", ns, pod_name))
            owner = (pod or {}).get("metadata", {}).get("ownerReferences", [{}])[0]
            if owner.get("kind") == "Job":
                self._finish_job(ns, owner["name"], process.popen.returncode)
            elif pod is not None and "deletionTimestamp" not in pod["metadata"]:
                self._terminate(pod)  # a replica that ended by itself is replaced
            self.objects.pop(("pods", ns, pod_name), None)
            del self._processes[(ns, pod_name)]

    def _run_job(self, ns: str, name: str) -> None:
        job = self.objects[("jobs", ns, name)]
        status = job.setdefault("status", {})
        if status.get("startTime") is None:
            status.update(startTime=_now(), active=1, ready=0)
            self._start_pod(job, ns, f"{name}-{uuid.uuid4().hex[:5]}", None)
            self._bump(job)
        elif status.get("active") and not status.get("ready"):
            pods = self._pods_of(ns, job["metadata"]["uid"])
            if any(self._ready(ns, p["metadata"]["name"]) for p in pods):
                status["ready"] = 1  # its signal handlers are set by now
                self._bump(job)

    def _finish_job(self, ns: str, name: str, code: int) -> None:
        job = self.objects.get(("jobs", ns, name))
        if job is None:
            return
        done = "succeeded" if code == 0 else "failed"
        job["status"].update({"active": 0, "ready": 0, done: 1})
        if code == 0:
            job["status"]["completionTime"] = _now()
        self._bump(job)


CONFIGMAP_LIMIT = 1024 * 1024


def _validate(resource: str, obj: dict[str, Any]) -> None:
    """What the API server checks of a ConfigMap's size: keys and values, binaryData decoded."""
    if resource != "configmaps":
        return
    size = sum(len(k) + len(v.encode()) for k, v in (obj.get("data") or {}).items())
    size += sum(len(k) + len(base64.b64decode(v)) for k, v in (obj.get("binaryData") or {}).items())
    if size > CONFIGMAP_LIMIT:
        name = (obj.get("metadata") or {}).get("name")
        raise ApiError(
            422,
            "Invalid",
            f'ConfigMap "{name}" is invalid: []: Too long: '
            f"must have at most {CONFIGMAP_LIMIT} bytes",
        )


def _signal(popen: subprocess.Popen[bytes], sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
        os.killpg(popen.pid, sig)


class _Handler(BaseHTTPRequestHandler):
    owner: Cluster
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet: the tests read requests
        pass

    def _answer(self, code: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if self.headers.get("Authorization") != f"Bearer {self.owner.token}":
            self._answer(401, _status(401, "Unauthorized", "Unauthorized"))
            return
        try:
            body = json.loads(raw) if raw else None
            code, answer = self.owner.handle(
                self.command, self.path, body, self.headers.get("Content-Type") or ""
            )
        except ApiError as exc:
            self._answer(exc.code, _status(exc.code, exc.reason, exc.message))
            return
        except (KeyError, ValueError, TypeError) as exc:
            self._answer(422, _status(422, "Invalid", f"invalid request: {exc!r}"))
            return
        self._answer(code, answer)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
