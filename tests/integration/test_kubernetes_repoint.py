"""The Kubernetes repoint through the real client, against the API server stand-in.

The key is written with a compare-and-set: a change by someone else between the read
and the write (409 Conflict) is read again and kept; the way back writes the old value
exactly; the Deployments that read the key at start are restarted; a Secret's values
appear in no change, log line or error.
"""

import base64
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cutover import wait
from cutover.errors import PreconditionFailed, StepFailed
from cutover.plan import KubernetesRepoint as Spec
from cutover.plan import Server
from cutover.repoint import kubernetes as k8s_repoint
from cutover.repoint.kubernetes import RESTARTED_AT, KubernetesRepoint, companion_name
from tests.k8s.apiserver import Cluster
from tests.k8s.workloads import deployment

NS = "shop"
PASSWORD = "s3cr3t-Pa55word"
OLD = f"postgresql://shop:{PASSWORD}@10.0.0.5:5432/shop?sslmode=require"
SOURCE = Server(host="10.0.0.5", port=5432, user="cutover")
TARGET = Server(host="10.0.0.9", port=6432, user="cutover")


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def secret_value(cluster: Cluster, name: str = "db", key: str = "DATABASE_URL") -> str:
    return base64.b64decode(cluster.get("secrets", NS, name)["data"][key]).decode()


@pytest.fixture
def secret(cluster: Cluster) -> Cluster:
    cluster.create(
        "secrets",
        NS,
        {"metadata": {"name": "db"}, "data": {"DATABASE_URL": b64(OLD), "OTHER": b64("x")}},
    )
    return cluster


def repoint(kubeconfig: Path, **spec: Any) -> KubernetesRepoint:
    chosen = {"secret": "db", "key": "DATABASE_URL", **spec}
    return KubernetesRepoint("db", Spec(kubeconfig=kubeconfig, namespace=NS, **chosen))


def test_the_secret_gets_the_target_address_and_keeps_its_credentials(
    secret: Cluster, kubeconfig: Path
) -> None:
    place = repoint(kubeconfig)
    assert not place.points_to(TARGET)

    place.point_to(TARGET, dry_run=False)

    assert (
        secret_value(secret) == f"postgresql://shop:{PASSWORD}@10.0.0.9:6432/shop?sslmode=require"
    )
    assert place.points_to(TARGET)
    assert secret_value(secret, companion_name("db")) == OLD  # kept for the way back
    assert secret_value(secret, key="OTHER") == "x"


def test_a_concurrent_change_is_read_again_and_kept(secret: Cluster, kubeconfig: Path) -> None:
    def meddle(obj: dict[str, Any]) -> None:  # someone else writes between our read and write
        obj["data"]["OTHER"] = b64("changed meanwhile")

    secret.interfere[("secrets", "db")] = meddle
    secret.requests.clear()

    repoint(kubeconfig).point_to(TARGET, dry_run=False)

    puts = [p for m, p in secret.requests if m == "PUT" and p.endswith("/secrets/db")]
    assert len(puts) == 2  # the first answered 409 Conflict, the second won
    assert secret_value(secret, key="OTHER") == "changed meanwhile"
    assert "10.0.0.9:6432" in secret_value(secret)


def test_a_key_that_changes_under_every_attempt_fails_after_a_bounded_number(
    secret: Cluster, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(k8s_repoint, "CONFLICT_ATTEMPTS", 3)
    original = secret.handle

    def always_meddling(method: str, url: str, body: Any, content_type: str) -> Any:
        if method == "PUT" and url.endswith("/secrets/db"):
            secret.interfere[("secrets", "db")] = lambda o: o["data"].update(OTHER=b64("again"))
        return original(method, url, body, content_type)

    secret.handle = always_meddling  # type: ignore[method-assign]
    with pytest.raises(StepFailed, match="changed under every one of 3 attempts"):
        repoint(kubeconfig).point_to(TARGET, dry_run=False)
    assert secret_value(secret) == OLD


def test_the_way_back_writes_the_old_value_exactly(secret: Cluster, kubeconfig: Path) -> None:
    # A keyword DSN retargeted and back would not read as written: the record restores it.
    odd = f"dbname=shop  user=shop password={PASSWORD} host=10.0.0.5 port=5432"
    secret.update("secrets", NS, "db", lambda o: o["data"].update(DATABASE_URL=b64(odd)))
    place = repoint(kubeconfig)
    place.point_to(TARGET, dry_run=False)
    assert "host=10.0.0.9 port=6432" in secret_value(secret)

    place.point_to(SOURCE, dry_run=False)  # what a rollback asks (the reversed plan's target)

    assert secret_value(secret) == odd
    assert place.points_to(SOURCE)


def test_a_config_map_key_as_host_and_port(cluster: Cluster, kubeconfig: Path) -> None:
    cluster.create("configmaps", NS, {"metadata": {"name": "app"}, "data": {"DB": "10.0.0.5:5432"}})
    place = KubernetesRepoint(
        "app",
        Spec(kubeconfig=kubeconfig, namespace=NS, config_map="app", key="DB", value="host:port"),
    )

    changes = place.point_to(TARGET, dry_run=False)

    assert cluster.get("configmaps", NS, "app")["data"]["DB"] == "10.0.0.9:6432"
    assert [c.action for c in changes] == ["configmap/app: DB=10.0.0.9:6432"]


def until(probe: Callable[[], bool]) -> None:
    wait.until(probe, timeout=20, what="the cluster did not get there", hint="")


def test_deployments_that_read_the_key_at_start_are_restarted_and_see_the_new_value(
    secret: Cluster, kubeconfig: Path, tmp_path: Path
) -> None:
    seen = tmp_path / "seen"
    argv = ["sh", "-c", f'echo "$DATABASE_URL" >> {seen}; exec sleep 600']
    env = [
        {
            "name": "DATABASE_URL",
            "valueFrom": {"secretKeyRef": {"name": "db", "key": "DATABASE_URL"}},
        }
    ]
    secret.create("deployments", NS, deployment("api", 1, argv=argv, env=env))
    until(lambda: seen.exists() and OLD in seen.read_text())

    repoint(kubeconfig, restart=["api"]).point_to(TARGET, dry_run=False)

    template = secret.get("deployments", NS, "api")["spec"]["template"]
    assert RESTARTED_AT in template["metadata"]["annotations"]
    until(lambda: "10.0.0.9:6432" in seen.read_text())  # a new pod read the new value
    assert repoint(kubeconfig, restart=["api"]).points_to(TARGET)


def test_a_restart_lost_to_a_crash_is_done_by_the_next_run(
    secret: Cluster, kubeconfig: Path
) -> None:
    secret.create("deployments", NS, deployment("api", 0))
    repoint(kubeconfig).point_to(TARGET, dry_run=False)  # as if killed before the restart

    again = repoint(kubeconfig, restart=["api"])
    assert not again.points_to(TARGET)
    changes = again.point_to(TARGET, dry_run=False)

    assert [c.action for c in changes][-1] == "deployment/api: rollout restart"
    assert again.points_to(TARGET)


def test_a_secret_value_appears_in_no_change_log_or_error(
    secret: Cluster, kubeconfig: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    place = repoint(kubeconfig)
    shown = [*place.point_to(TARGET, dry_run=True), *place.point_to(TARGET, dry_run=False)]
    place.point_to(SOURCE, dry_run=False)
    with pytest.raises(PreconditionFailed) as failed:
        repoint(kubeconfig, secret="absent-secret").point_to(TARGET, dry_run=False)

    texts = [c.action for c in shown] + [caplog.text, failed.value.message, failed.value.hint]
    assert shown[0].action == "secret/db: key DATABASE_URL set (value not shown)"
    for text in texts:
        assert PASSWORD not in text
        assert b64(PASSWORD)[:12] not in text
