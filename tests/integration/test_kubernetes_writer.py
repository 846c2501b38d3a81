"""The Kubernetes writer through the real client, against the API server stand-in.

The stop records each workload's count before it changes it, holds the autoscaler,
suspends the CronJob and waits its Job out (or, with end_running_jobs, deletes the
Job and waits only for its pod to end); the pods go within the drain timeout
(or the switch's wait fails naming them); the start restores exactly the recorded
counts, suspensions and autoscaler targets, also after a crash left the live counts
at zero.
"""

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cutover import wait
from cutover.errors import StepFailed
from cutover.ledger import FileStore, WriterRecords
from cutover.plan import KubernetesWriter as Spec
from cutover.writers.kubernetes import KubernetesWriter, held_name
from tests.k8s.apiserver import ApiError, Cluster
from tests.k8s.workloads import autoscaler, cron_job, deployment, job_of, stateful_set

NS = "shop"


def until(probe: Callable[[], bool], timeout: float = 20.0) -> None:
    wait.until(probe, timeout=timeout, what="the cluster did not get there", hint="")


def pods(cluster: Cluster, app: str) -> list[dict[str, Any]]:
    return cluster.select("pods", NS, f"app={app}")


def ready(cluster: Cluster, resource: str, name: str) -> int:
    return int(cluster.get(resource, NS, name)["status"].get("readyReplicas", 0))


def running(cluster: Cluster, job: str) -> bool:
    """The Job's pod is ready: it has set its SIGTERM handler."""
    return bool(cluster.get("jobs", NS, job).get("status", {}).get("ready"))


@pytest.fixture
def records(tmp_path: Path) -> WriterRecords:
    return WriterRecords(FileStore(tmp_path / "state", "move", kind="writers"))


@pytest.fixture
def shop(cluster: Cluster) -> Cluster:
    """api (3 replicas, an autoscaler 2..5), db-sync (a StatefulSet of 2), a nightly CronJob."""
    cluster.create("deployments", NS, deployment("api", 3))
    cluster.create("statefulsets", NS, stateful_set("db-sync", 2))
    cluster.create("horizontalpodautoscalers", NS, autoscaler("api", "api", low=2, high=5))
    cluster.create("cronjobs", NS, cron_job("nightly"))
    until(lambda: ready(cluster, "deployments", "api") == 3)
    until(lambda: ready(cluster, "statefulsets", "db-sync") == 2)
    return cluster


def writer(kubeconfig: Path, records: WriterRecords, **spec: Any) -> KubernetesWriter:
    chosen = spec or {
        "deployments": ["api"],
        "statefulsets": ["db-sync"],
        "cronjobs": ["nightly"],
    }
    return KubernetesWriter(
        "shop",
        Spec(kubeconfig=kubeconfig, namespace=NS, ready_timeout=20, **chosen),
        records=records,
    )


def test_stop_records_the_counts_holds_the_autoscaler_suspends_the_cronjob_and_drains(
    shop: Cluster, kubeconfig: Path, records: WriterRecords
) -> None:
    cron = shop.get("cronjobs", NS, "nightly")
    shop.create("jobs", NS, job_of(cron, "nightly-1", seconds=3.0))
    until(lambda: shop.get("jobs", NS, "nightly-1").get("status", {}).get("active") == 1)
    shop.requests.clear()
    stopping = writer(kubeconfig, records)

    changes = stopping.stop(dry_run=False)

    record = records.get("shop")
    assert record is not None
    assert record["workloads"] == [
        {"kind": "Deployment", "name": "api", "replicas": 3},
        {"kind": "StatefulSet", "name": "db-sync", "replicas": 2},
    ]
    assert record["cronjobs"] == [{"name": "nightly", "suspended": False}]
    assert record["autoscalers"][0]["target"]["name"] == "api"
    # Scaled through the scale subresource, after the autoscaler was held.
    scaled = [p for m, p in shop.requests if m == "PATCH" and p.endswith("/scale")]
    assert scaled == [
        f"/apis/apps/v1/namespaces/{NS}/deployments/api/scale",
        f"/apis/apps/v1/namespaces/{NS}/statefulsets/db-sync/scale",
    ]
    patches = [p for m, p in shop.requests if m == "PATCH"]
    assert patches.index(f"/apis/autoscaling/v2/namespaces/{NS}/horizontalpodautoscalers/api") < (
        patches.index(scaled[0])
    )
    assert shop.get("horizontalpodautoscalers", NS, "api")["spec"]["scaleTargetRef"][
        "name"
    ] == held_name("api")
    assert shop.get("cronjobs", NS, "nightly")["spec"]["suspend"] is True
    assert any("replicas 3 -> 0" in c.action for c in changes)

    assert not stopping.is_drained()  # the Job still runs, the pods are terminating
    assert "job/nightly-1" in stopping.draining()
    until(stopping.is_drained, timeout=10)
    assert not any(m == "DELETE" for m, _ in shop.requests)  # waited out, not ended
    assert shop.get("jobs", NS, "nightly-1")["status"]["succeeded"] == 1
    assert pods(shop, "api") == [] and pods(shop, "db-sync") == []
    time.sleep(0.5)  # the autoscaler, held, does not scale api back to its minReplicas
    assert shop.get("deployments", NS, "api")["spec"]["replicas"] == 0


def test_an_autoscaler_not_held_scales_the_deployment_back_up(shop: Cluster) -> None:
    """What the hold prevents: the stand-in's autoscaler restores minReplicas."""
    shop.update("deployments", NS, "api", lambda o: o["spec"].update(replicas=0))
    until(lambda: shop.get("deployments", NS, "api")["spec"]["replicas"] == 2)


def test_start_restores_the_recorded_counts_cronjob_and_autoscaler_exactly(
    shop: Cluster, kubeconfig: Path, records: WriterRecords
) -> None:
    hpa_before = shop.get("horizontalpodautoscalers", NS, "api")["spec"]
    stopping = writer(kubeconfig, records)
    stopping.stop(dry_run=False)
    until(stopping.is_drained)

    stopping.start(dry_run=False)

    assert ready(shop, "deployments", "api") == 3
    assert ready(shop, "statefulsets", "db-sync") == 2
    assert shop.get("horizontalpodautoscalers", NS, "api")["spec"] == hpa_before
    assert shop.get("cronjobs", NS, "nightly")["spec"]["suspend"] is False
    assert stopping.is_healthy() == (True, "")
    record = records.get("shop")
    assert record is not None and record["started"] is True


def test_a_rerun_after_a_crash_restores_from_the_record_not_the_live_zero(
    shop: Cluster, kubeconfig: Path, records: WriterRecords
) -> None:
    writer(kubeconfig, records).stop(dry_run=False)
    # The controller died here. A new one runs the stop again (the step was not recorded
    # done), then the start: the live counts are 0 by now, the record still says 3 and 2.
    again = writer(kubeconfig, records)
    until(again.is_drained)
    again.stop(dry_run=False)
    assert records.get("shop")["workloads"][0]["replicas"] == 3  # type: ignore[index]

    writer(kubeconfig, records).start(dry_run=False)

    assert shop.get("deployments", NS, "api")["spec"]["replicas"] == 3
    assert shop.get("statefulsets", NS, "db-sync")["spec"]["replicas"] == 2


def test_is_healthy_compares_ready_replicas_with_the_recorded_count(
    shop: Cluster, kubeconfig: Path, records: WriterRecords
) -> None:
    stopping = writer(kubeconfig, records)
    stopping.stop(dry_run=False)
    until(stopping.is_drained)
    stopping.start(dry_run=False)
    shop.update("horizontalpodautoscalers", NS, "api", lambda o: o["spec"].update(maxReplicas=1))

    until(lambda: not stopping.is_healthy()[0])
    assert stopping.is_healthy() == (False, "deployment/api 1 of 3 ready")


def test_a_selector_chooses_the_workloads_and_cronjobs_by_label(
    shop: Cluster, kubeconfig: Path, records: WriterRecords
) -> None:
    shop.create("deployments", NS, {**deployment("other", 1), "metadata": {"name": "other"}})
    stopping = writer(kubeconfig, records, selector="part-of=shop")

    changes = stopping.stop(dry_run=True)

    assert records.get("shop") is None  # a dry run records nothing
    shown = [c.action for c in changes]
    assert "deployment/api: replicas 3 -> 0" in shown
    assert "statefulset/db-sync: replicas 2 -> 0" in shown
    assert "cronjob/nightly: suspend" in shown
    assert not any("other" in a for a in shown)
    assert shop.get("deployments", NS, "api")["spec"]["replicas"] == 3
    # A dry run of the start shows the counts the stop would record.
    assert "deployment/api: replicas -> 3 (recorded)" in [
        c.action for c in stopping.start(dry_run=True)
    ]


def test_pods_that_outlast_the_drain_timeout_fail_the_wait_naming_them(
    cluster: Cluster, kubeconfig: Path, records: WriterRecords
) -> None:
    cluster.create("deployments", NS, deployment("slow", 1, linger=30.0, grace=30))
    until(lambda: ready(cluster, "deployments", "slow") == 1)
    stopping = writer(kubeconfig, records, deployments=["slow"])
    stopping.stop(dry_run=False)

    with pytest.raises(StepFailed) as failed:
        wait.until(
            stopping.is_drained,
            timeout=1.0,
            what=lambda: f"writers slow did not drain; slow still runs {stopping.draining()}",
            hint="",
        )
    assert "still runs pod/slow-" in failed.value.message


def test_the_switch_names_what_still_runs_when_a_tier_does_not_drain(
    cluster: Cluster, kubeconfig: Path, tmp_path: Path
) -> None:
    from cutover.phases.switch import Switch
    from cutover.plan import parse

    cluster.create("deployments", NS, deployment("slow", 1, linger=30.0, grace=30))
    until(lambda: ready(cluster, "deployments", "slow") == 1)
    plan = parse(
        {
            "move": "m",
            "source": {"host": "127.0.0.1", "user": "u"},
            "target": {"host": "127.0.0.2", "user": "u"},
            "databases": ["db"],
            "state_dir": str(tmp_path / "state"),
            "thresholds": {"drain_timeout": "1s"},
            "writers": [
                {
                    "name": "slow",
                    "kubernetes": {
                        "kubeconfig": str(kubeconfig),
                        "namespace": NS,
                        "deployments": ["slow"],
                    },
                }
            ],
        }
    )
    switch = Switch(plan, None, None, clock=time.monotonic, sleep=time.sleep)  # type: ignore[arg-type]

    with pytest.raises(StepFailed) as failed:
        switch.stop_writers(dry_run=False)

    assert "writers slow did not drain" in failed.value.message
    assert "slow still runs pod/slow-" in failed.value.message
    switch.start_writers(dry_run=False)  # the undo: back to 1, from the record
    assert cluster.get("deployments", NS, "slow")["spec"]["replicas"] == 1


def test_with_end_running_jobs_the_stop_deletes_the_running_job_and_drains_its_pod(
    shop: Cluster, kubeconfig: Path, records: WriterRecords
) -> None:
    cron = shop.get("cronjobs", NS, "nightly")
    # A Job of an hour; its pod takes 1 s to end on SIGTERM.
    shop.create("jobs", NS, job_of(cron, "nightly-1", seconds=3600.0, linger=1.0))
    shop.create("cronjobs", NS, cron_job("weekly"))  # not the writer's: its Job runs on
    shop.create("jobs", NS, job_of(shop.get("cronjobs", NS, "weekly"), "weekly-1", seconds=3600))
    until(lambda: all(running(shop, job) for job in ("nightly-1", "weekly-1")))
    stopping = writer(kubeconfig, records, cronjobs=["nightly"], end_running_jobs=True)

    planned = [c.action for c in stopping.stop(dry_run=True)]
    assert planned == [
        "cronjob/nightly: suspend",
        "job/nightly-1: delete (propagationPolicy Background)",
    ]
    assert shop.get("jobs", NS, "nightly-1")["status"]["active"] == 1  # a dry run ends nothing
    shop.requests.clear()
    began = time.monotonic()

    changes = stopping.stop(dry_run=False)

    assert [c.action for c in changes] == planned
    job_path = f"/apis/batch/v1/namespaces/{NS}/jobs/nightly-1"
    cron_path = f"/apis/batch/v1/namespaces/{NS}/cronjobs/nightly"
    assert [r for r in shop.requests if r[0] in ("PATCH", "DELETE")] == [
        ("PATCH", cron_path),  # suspended first: no new Job starts while the old ones end
        ("DELETE", job_path),
    ]
    with pytest.raises(ApiError):
        shop.get("jobs", NS, "nightly-1")
    assert records.get("shop")["ended_jobs"] == ["nightly-1"]  # type: ignore[index]
    # The Job is gone; its pod, terminating, is what the drain waits for.
    assert not stopping.is_drained()
    assert stopping.draining().startswith("pod/nightly-1-")
    until(stopping.is_drained, timeout=10)
    assert time.monotonic() - began < 5  # its grace period, not the hour of its work
    assert shop.select("pods", NS, "app=nightly-1") == []
    assert shop.get("jobs", NS, "weekly-1")["status"]["active"] == 1
    assert len(shop.select("pods", NS, "app=weekly-1")) == 1

    # A stop run again (the controller died before the step was recorded) finds nothing
    # running: no second delete, the record keeps the Job it ended.
    shop.requests.clear()
    again = writer(kubeconfig, records, cronjobs=["nightly"], end_running_jobs=True)
    assert [c.action for c in again.stop(dry_run=False)] == ["cronjob/nightly: suspend"]
    assert not any(m == "DELETE" for m, _ in shop.requests)
    assert records.get("shop")["ended_jobs"] == ["nightly-1"]  # type: ignore[index]
    assert again.is_drained()
    again.start(dry_run=False)
    assert shop.get("cronjobs", NS, "nightly")["spec"]["suspend"] is False


def test_a_job_deleted_by_someone_else_between_the_list_and_the_delete_is_no_error(
    shop: Cluster, kubeconfig: Path, records: WriterRecords
) -> None:
    cron = shop.get("cronjobs", NS, "nightly")
    shop.create("jobs", NS, job_of(cron, "nightly-1", seconds=3600.0))
    until(lambda: running(shop, "nightly-1"))
    # e.g. a run that died after its delete, or the Job's TTL controller: a 404 for ours
    shop.interfere[("jobs", "nightly-1")] = lambda _: shop.delete(
        "jobs", NS, "nightly-1", propagation="Background"
    )
    stopping = writer(kubeconfig, records, cronjobs=["nightly"], end_running_jobs=True)

    stopping.stop(dry_run=False)

    assert ("DELETE", f"/apis/batch/v1/namespaces/{NS}/jobs/nightly-1") in shop.requests
    until(stopping.is_drained, timeout=10)
    assert shop.select("pods", NS, "app=nightly-1") == []
