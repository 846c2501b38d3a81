"""The manifests in k8s/ validate offline against the Kubernetes schemas, built or not.

Each document is checked strictly (unknown fields fail) with kubernetes-validate;
the kustomizations are built with `kubectl kustomize` where kubectl is installed
and their output checked the same way. Custom resources of the Prometheus
operator have no schema there: they are only checked to be well formed.
"""

import shutil
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.conftest import REPO

K8S = REPO / "k8s"
VERSION = "1.30"  # the oldest Kubernetes these manifests are for (podFailurePolicy is GA)
CUSTOM = {"monitoring.coreos.com/v1"}  # ServiceMonitor, PodMonitor, PrometheusRule
KUSTOMIZATIONS = sorted(p.parent for p in K8S.rglob("kustomization.yaml"))


def documents(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def check(document: dict[str, Any]) -> None:
    assert document["metadata"]["name"], document
    if document["apiVersion"] in CUSTOM:
        assert document["kind"] and "spec" in document
        return
    kubernetes_validate.validate(document, VERSION, strict=True)


@pytest.mark.parametrize(
    "path",
    [p for p in sorted(K8S.rglob("*.yaml")) if p.name != "kustomization.yaml"],
    ids=lambda p: str(p.relative_to(K8S)),
)
def test_each_manifest_validates_against_the_schemas(path: Path) -> None:
    found = documents(path.read_text())
    assert found, f"{path} holds no document"
    for document in found:
        check(document)


def test_a_wrong_field_is_caught() -> None:
    """The check can fail: a Job whose pod condition lacks its status, as one once did."""
    job = next(
        d
        for d in documents((K8S / "base" / "controller-job.yaml").read_text())
        if d["kind"] == "Job"
    )
    del job["spec"]["podFailurePolicy"]["rules"][0]["onPodConditions"][0]["status"]
    with pytest.raises(kubernetes_validate.ValidationError):
        check(job)


def built(directory: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the kustomizations are not built")
    out = subprocess.run(
        [kubectl, "kustomize", str(directory)], capture_output=True, text=True, check=True
    )
    return documents(out.stdout)


@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(K8S)))
def test_each_kustomization_builds_and_validates(directory: Path) -> None:
    for document in built(directory):
        check(document)


def test_the_airgapped_overlay_changes_the_image_and_nothing_else() -> None:
    base, overlay = built(K8S / "base"), built(K8S / "overlays" / "airgapped")

    def images(docs: list[dict[str, Any]]) -> list[str]:
        return [
            c["image"]
            for d in docs
            if d["kind"] == "Job"
            for c in d["spec"]["template"]["spec"]["containers"]
        ]

    assert images(base) == ["cutover:0.1.0"]
    assert images(overlay) == ["registry.internal.example/platform/cutover:0.1.0"]
    for d in overlay:
        for c in d["spec"]["template"]["spec"]["containers"] if d["kind"] == "Job" else []:
            c["image"] = "cutover:0.1.0"
    assert overlay == base


def test_the_controller_runs_unprivileged_on_a_read_only_root() -> None:
    for path in (K8S / "base" / "controller-job.yaml", K8S / "backfill-job.yaml"):
        job = next(d for d in documents(path.read_text()) if d["kind"] == "Job")
        pod = job["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, path
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, path
            assert context["allowPrivilegeEscalation"] is False, path
            assert context["capabilities"]["drop"] == ["ALL"], path
