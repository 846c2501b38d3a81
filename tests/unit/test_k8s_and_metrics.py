"""The backfill Job's manifest is consistent with the plan loader; its metrics read right."""

from pathlib import Path

import yaml
from prometheus_client import generate_latest

from cutover import metrics
from cutover.plan import load

REPO = Path(__file__).resolve().parents[2]


def test_the_backfill_job_runs_the_plan_of_its_config_map_with_secrets_from_a_secret(
    tmp_path: Path,
) -> None:
    documents = list(yaml.safe_load_all((REPO / "k8s" / "backfill-job.yaml").read_text()))
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    job = next(d for d in documents if d["kind"] == "Job")
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(config_map["data"]["plan.yaml"])
    plan = load(plan_path)  # a plan the loader accepts, passwords only by reference
    assert plan.backfill.tables == [("public", "segment_diffs")]

    pod = job["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["args"][:3] == ["backfill", "--plan", "/etc/cutover/plan.yaml"]
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert mounts["plan"] == "/etc/cutover"
    assert volumes["plan"]["configMap"]["name"] == config_map["metadata"]["name"]
    from_secret = {e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    for server in (plan.source, plan.target):
        assert server.password is not None
        assert server.password.startswith("env:")
        assert server.password.removeprefix("env:") in from_secret
    assert str(plan.state_dir) == mounts["state"]


def test_backfill_progress_is_exposed_per_table() -> None:
    metrics.backfill_progress(
        "m", "db", '"public"."t"', rows_done=10, rows_total=40, pages_done=1, pages_total=4
    )
    text = generate_latest(metrics.REGISTRY).decode()
    labels = 'database="db",move="m",table="\\"public\\".\\"t\\""'
    assert f"cutover_backfill_rows_done{{{labels}}} 10.0" in text
    assert f"cutover_backfill_rows_total{{{labels}}} 40.0" in text
    assert f"cutover_backfill_pages_total{{{labels}}} 4.0" in text
