"""Every call cutover makes to Kubernetes is one the Role of k8s/base/rbac.yaml allows."""

import json
import re
from pathlib import Path

import yaml

from cutover import wait
from cutover.ledger import Journal, WriterRecords
from cutover.ledger.configmap import ConfigMapStore
from cutover.plan import ConfigMapLedger, Server
from cutover.plan import KubernetesRepoint as RepointSpec
from cutover.plan import KubernetesWriter as WriterSpec
from cutover.repoint.kubernetes import KubernetesRepoint
from cutover.writers.kubernetes import KubernetesWriter
from tests.conftest import REPO
from tests.k8s.apiserver import Cluster
from tests.k8s.workloads import autoscaler, cron_job, deployment, job_of, stateful_set

NS = "shop"
VERBS = {"POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
_PATH = re.compile(
    r"^/(?:api/v1|apis/(?P<group>[^/]+)/[^/]+)/namespaces/[^/]+/(?P<resource>[^/]+)"
    r"(?:/(?P<name>[^/]+)(?:/(?P<sub>[^/]+))?)?$"
)


Rule = tuple[str, str, str, str | None]  # group, resource, verb, name (None: any)


def allowed() -> set[Rule]:
    documents = yaml.safe_load_all((REPO / "k8s" / "base" / "rbac.yaml").read_text())
    role = next(d for d in documents if d["kind"] == "Role")
    return {
        (group, resource, verb, name)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
        for name in rule.get("resourceNames") or [None]
    }


def permits(rules: set[Rule], call: Rule) -> bool:
    group, resource, verb, name = call
    return bool({(group, resource, verb, None), (group, resource, verb, name)} & rules)


def test_the_role_allows_every_call_of_the_writer_the_repoint_and_the_ledger(
    cluster: Cluster, kubeconfig: Path, tmp_path: Path
) -> None:
    cluster.create("deployments", NS, deployment("api", 2))
    cluster.create("statefulsets", NS, stateful_set("sync", 1))
    cluster.create("horizontalpodautoscalers", NS, autoscaler("api", "api", low=1, high=3))
    cron = cluster.create("cronjobs", NS, cron_job("nightly"))
    cluster.create("jobs", NS, job_of(cron, "nightly-1", seconds=3600.0))  # ended by the stop
    # The names of the Role's example move, `orders`, whose Secret is `orders-db`.
    cluster.create("secrets", NS, {"metadata": {"name": "orders-db"}, "data": {"URL": "aG9zdD1h"}})
    wait.until(
        lambda: bool(cluster.get("jobs", NS, "nightly-1").get("status", {}).get("active")),
        timeout=20,
        what="the job did not start",
        hint="",
    )
    cluster.requests.clear()

    ledger = ConfigMapLedger(kubeconfig=kubeconfig, namespace=NS)
    writer = KubernetesWriter(
        "shop",
        WriterSpec(
            kubeconfig=kubeconfig,
            namespace=NS,
            selector="part-of=shop",
            ready_timeout=20,
            end_running_jobs=True,
        ),
        records=WriterRecords(ConfigMapStore(ledger, "orders", kind="writers")),
    )
    writer.stop(dry_run=False)
    wait.until(writer.is_drained, timeout=20, what="not drained", hint="")
    writer.start(dry_run=False)
    writer.is_healthy()
    place = KubernetesRepoint(
        "db",
        RepointSpec(
            kubeconfig=kubeconfig, namespace=NS, secret="orders-db", key="URL", restart=["api"]
        ),
    )
    place.point_to(Server(host="b", user="u"), dry_run=False)
    place.points_to(Server(host="b", user="u"))
    place.point_to(Server(host="a", user="u"), dry_run=False)  # as a rollback does
    place.forget_previous(dry_run=False)  # as cleanup does
    assert place.previous_forgotten()
    store = ConfigMapStore(ledger, "orders")
    with store.lock():
        journal = Journal(store, move="orders")
        journal.note("test", detail="created")
        journal.note("test", detail="updated")
        for mode in ("counts", "checksum"):  # made, then replaced
            ConfigMapStore(ledger, "orders", kind="verify").write(json.dumps({"mode": mode}))

    calls: set[Rule] = set()
    for method, path in cluster.requests:
        m = _PATH.match(path)
        assert m is not None, path
        resource = m["resource"] + (f"/{m['sub']}" if m["sub"] else "")
        verb = VERBS.get(method) or ("get" if m["name"] else "list")
        calls.add((m["group"] or "", resource, verb, m["name"]))
    rules = allowed()
    assert {c for c in calls if not permits(rules, c)} == set()
    # and nothing it never does: each rule is used, each name of a rule too
    used = {(g, r, v, n if (g, r, v, n) in rules else None) for g, r, v, n in calls}
    assert rules - used == set()
    assert len(calls) > 15  # every kind of call was made
    assert ("batch", "jobs", "delete", "nightly-1") in calls
