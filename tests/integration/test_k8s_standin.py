"""The API server stand-in itself, through the real client: what the other Kubernetes
tests rely on it for (auth, compare-and-set, Leases, the kubelet's grace period, the
garbage collector's propagation policies)."""

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from cutover import wait
from tests.k8s.apiserver import Cluster
from tests.k8s.workloads import cron_job, deployment, job_of

NS = "shop"


def until(probe: Callable[[], bool], timeout: float = 20.0) -> None:
    wait.until(probe, timeout=timeout, what="the cluster did not get there", hint="")


def api(kubeconfig: Path) -> client.ApiClient:
    return config.new_client_from_config(config_file=str(kubeconfig))


def test_a_request_without_the_token_is_refused(cluster: Cluster, kubeconfig: Path) -> None:
    anonymous = client.Configuration()
    anonymous.host = cluster.url
    with pytest.raises(ApiException) as refused:
        client.CoreV1Api(client.ApiClient(anonymous)).list_namespaced_pod(NS)
    assert refused.value.status == 401
    assert client.CoreV1Api(api(kubeconfig)).list_namespaced_pod(NS).items == []


def test_a_stale_resource_version_is_a_conflict(cluster: Cluster, kubeconfig: Path) -> None:
    core = client.CoreV1Api(api(kubeconfig))
    core.create_namespaced_config_map(
        NS, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="c"), data={"k": "1"})
    )
    first, second = (core.read_namespaced_config_map("c", NS) for _ in range(2))
    first.data = {"k": "2"}
    core.replace_namespaced_config_map("c", NS, first)
    second.data = {"k": "3"}
    with pytest.raises(ApiException) as conflict:
        core.replace_namespaced_config_map("c", NS, second)
    assert conflict.value.status == 409
    assert core.read_namespaced_config_map("c", NS).data == {"k": "2"}


def test_leases_are_kept(cluster: Cluster, kubeconfig: Path) -> None:
    leases = client.CoordinationV1Api(api(kubeconfig))
    body = client.V1Lease(
        metadata=client.V1ObjectMeta(name="cutover-m"),
        spec=client.V1LeaseSpec(holder_identity="a", lease_duration_seconds=15),
    )
    leases.create_namespaced_lease(NS, body)
    found = leases.read_namespaced_lease("cutover-m", NS)
    assert found.spec is not None and found.spec.holder_identity == "a"
    with pytest.raises(ApiException) as taken:
        leases.create_namespaced_lease(NS, body)
    assert taken.value.status == 409


def test_a_replica_that_ignores_sigterm_is_killed_after_its_grace_period(
    cluster: Cluster,
) -> None:
    cluster.create("deployments", NS, deployment("stubborn", 1, linger=60.0, grace=1))
    until(lambda: cluster.get("deployments", NS, "stubborn")["status"].get("readyReplicas") == 1)
    started = time.monotonic()
    cluster.update("deployments", NS, "stubborn", lambda o: o["spec"].update(replicas=0))
    until(lambda: not cluster.select("pods", NS, "app=stubborn"))
    assert 0.9 <= time.monotonic() - started < 10


def test_a_deleted_job_orphans_its_pod_by_default_and_ends_it_in_the_background(
    cluster: Cluster, kubeconfig: Path
) -> None:
    batch = client.BatchV1Api(api(kubeconfig))
    cron = cluster.create("cronjobs", NS, cron_job("nightly"))
    for name in ("kept", "ended"):
        cluster.create("jobs", NS, job_of(cron, name, seconds=3600.0, linger=0.5, grace=5))
    until(
        lambda: all(
            cluster.get("jobs", NS, j).get("status", {}).get("ready") for j in ("kept", "ended")
        )
    )

    batch.delete_namespaced_job("kept", NS)  # batch/v1's default: Orphan
    batch.delete_namespaced_job(
        "ended", NS, body=client.V1DeleteOptions(propagation_policy="Background")
    )

    until(lambda: not cluster.select("pods", NS, "app=ended"))
    (orphan,) = cluster.select("pods", NS, "app=kept")
    assert "deletionTimestamp" not in orphan["metadata"]
    with pytest.raises(ApiException) as gone:
        batch.delete_namespaced_job(
            "ended", NS, body=client.V1DeleteOptions(propagation_policy="Background")
        )
    assert gone.value.status == 404
