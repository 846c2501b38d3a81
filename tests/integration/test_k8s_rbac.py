"""Every call cutover makes to Kubernetes is one the Role of k8s/rbac.yaml allows."""

import re
from pathlib import Path

import yaml

from cutover import wait
from cutover.ledger import FileStore, Journal, WriterRecords
from cutover.ledger.configmap import ConfigMapStore
from cutover.plan import ConfigMapLedger, Server
from cutover.plan import KubernetesRepoint as RepointSpec
from cutover.plan import KubernetesWriter as WriterSpec
from cutover.repoint.kubernetes import KubernetesRepoint
from cutover.writers.kubernetes import KubernetesWriter
from tests.conftest import REPO
from tests.k8s.apiserver import Cluster
from tests.k8s.workloads import autoscaler, cron_job, deployment, stateful_set

NS = "shop"
VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)/namespaces/[^/]+/(?P<resource>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$"
)


def allowed() -> set[tuple[str, str, str]]:
    documents = yaml.safe_load_all((REPO / "k8s" / "rbac.yaml").read_text())
    role = next(d for d in documents if d["kind"] == "Role")
    return {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }


def test_the_role_allows_every_call_of_the_writer_the_repoint_and_the_ledger(
    cluster: Cluster, kubeconfig: Path, tmp_path: Path
) -> None:
    cluster.create("deployments", NS, deployment("api", 2))
    cluster.create("statefulsets", NS, stateful_set("sync", 1))
    cluster.create("horizontalpodautoscalers", NS, autoscaler("api", "api", low=1, high=3))
    cluster.create("cronjobs", NS, cron_job("nightly"))
    cluster.create("secrets", NS, {"metadata": {"name": "db"}, "data": {"URL": "aG9zdD1h"}})
    cluster.requests.clear()

    writer = KubernetesWriter(
        "shop",
        WriterSpec(kubeconfig=kubeconfig, namespace=NS, selector="part-of=shop", ready_timeout=20),
        records=WriterRecords(FileStore(tmp_path, "m", kind="writers")),
    )
    writer.stop(dry_run=False)
    wait.until(writer.is_drained, timeout=20, what="not drained", hint="")
    writer.start(dry_run=False)
    writer.is_healthy()
    place = KubernetesRepoint(
        "db",
        RepointSpec(kubeconfig=kubeconfig, namespace=NS, secret="db", key="URL", restart=["api"]),
    )
    place.point_to(Server(host="b", user="u"), dry_run=False)
    place.points_to(Server(host="b", user="u"))
    store = ConfigMapStore(ConfigMapLedger(kubeconfig=kubeconfig, namespace=NS), "m")
    with store.lock():
        journal = Journal(store, move="m")
        journal.note("test", detail="created")
        journal.note("test", detail="updated")

    calls = set()
    for method, path in cluster.requests:
        m = _PATH.match(path)
        assert m is not None, path
        resource = m["resource"] + (f"/{m['sub']}" if m["sub"] else "")
        verb = VERBS.get(method) or ("get" if m["name"] else "list")
        calls.add((m["group"] or "", resource, verb))
    assert calls - allowed() == set()
    assert allowed() - calls == set()  # and nothing it never does
    assert len(calls) > 15  # every kind of call was made
