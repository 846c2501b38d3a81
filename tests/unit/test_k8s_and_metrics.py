"""The Kubernetes manifests agree with the code; the metrics read right and match the dashboard."""

import json
import re
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client import generate_latest

from cutover import metrics
from cutover.ledger import FileStore, Journal
from cutover.metrics import exporter
from cutover.plan import load
from cutover.state import step_state
from cutover.types import TableState

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
    exporter.backfill_progress(
        "m", "db", '"public"."t"', rows_done=10, rows_total=40, pages_done=1, pages_total=4
    )
    text = generate_latest(exporter.REGISTRY).decode()
    labels = 'database="db",move="m",table="\\"public\\".\\"t\\""'
    assert f"cutover_backfill_rows_done{{{labels}}} 10.0" in text
    assert f"cutover_backfill_rows_total{{{labels}}} 40.0" in text
    assert f"cutover_backfill_pages_total{{{labels}}} 4.0" in text


# -- the move's exporter, the dashboard and the alerts ------------------------------------------

MONITORING = REPO / "k8s" / "monitoring"


def exposed_names() -> set[str]:
    """Every metric name the exporter serves: the move's families and the backfill's gauges."""
    collector = exporter.MoveCollector("m", lambda: metrics.Snapshot(servers={}))
    text = exporter.exposition(collector) + generate_latest(exporter.REGISTRY).decode()
    names = set()
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            names |= {name, f"{name}_total"} if kind == "counter" else {name}
    return names


def queried_names(expression: str) -> set[str]:
    """The cutover_ names a PromQL expression reads (label names such as cutover_phase too)."""
    return set(re.findall(r"\bcutover_[a-z_]+\b", expression))


def test_every_metric_the_dashboard_and_the_rules_query_is_exposed() -> None:
    dashboard = json.loads((MONITORING / "dashboard.json").read_text())
    panel_exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    variable_exprs = [v["query"] for v in dashboard["templating"]["list"] if v["type"] == "query"]
    rules = yaml.safe_load((MONITORING / "rules.yaml").read_text())
    rule_exprs = [r["expr"] for g in rules["spec"]["groups"] for r in g["rules"]]
    assert len(panel_exprs) >= 12 and len(rule_exprs) >= 5

    exposed = exposed_names()
    for expression in panel_exprs + variable_exprs + rule_exprs:
        queried = queried_names(expression)
        assert queried, expression
        assert queried <= exposed, f"{expression}: {sorted(queried - exposed)} not exposed"
    # What the issue asks the dashboard to show, and the alerts to watch.
    shown = set().union(*(queried_names(e) for e in panel_exprs))
    for name in (
        "cutover_replication_lag_bytes",
        "cutover_replication_lag_seconds",
        "cutover_tables",
        "cutover_phase",
        "cutover_slot_wal_retained_bytes",
        "cutover_write_pause_seconds",
    ):
        assert name in shown
    alerts = {r["alert"]: r for g in rules["spec"]["groups"] for r in g["rules"]}
    assert alerts["CutoverReplicationLagHigh"]["for"] == "10m"
    assert {
        "CutoverReplicationStopped",
        "CutoverSlotRetainingWAL",
        "CutoverSwitchRolledBack",
    } <= set(alerts)


def test_the_dashboard_is_provisioned_from_its_file_and_the_exporter_runs_the_plan() -> None:
    kustomization = yaml.safe_load((MONITORING / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (MONITORING / resource).exists()
    generated = kustomization["configMapGenerator"][0]
    assert generated["options"]["labels"]["grafana_dashboard"] == "1"
    assert generated["files"] == ["cutover.json=dashboard.json"]

    documents = list(yaml.safe_load_all((MONITORING / "exporter.yaml").read_text()))
    deployment = next(d for d in documents if d["kind"] == "Deployment")
    service = next(d for d in documents if d["kind"] == "Service")
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["args"][:3] == ["metrics", "--plan", "/etc/cutover/plan.yaml"]
    port = int(container["args"][container["args"].index("--port") + 1])
    assert container["ports"][0]["containerPort"] == port
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    monitors = {
        d["kind"]: d for d in yaml.safe_load_all((MONITORING / "monitors.yaml").read_text())
    }
    assert (
        monitors["ServiceMonitor"]["spec"]["selector"]["matchLabels"]
        == service["metadata"]["labels"]
    )
    job = next(
        d
        for d in yaml.safe_load_all((REPO / "k8s" / "backfill-job.yaml").read_text())
        if d["kind"] == "Job"
    )
    pod_labels = job["spec"]["template"]["metadata"]["labels"]
    assert monitors["PodMonitor"]["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


@given(
    st.dictionaries(
        st.text(min_size=1, max_size=30),
        st.sampled_from(list(TableState)),
        max_size=50,
    )
)
def test_tables_by_state_count_every_table_once_under_a_bounded_label(
    table_states: dict[str, TableState],
) -> None:
    by_state: dict[TableState, int] = {}
    for state in table_states.values():
        by_state[state] = by_state.get(state, 0) + 1
    snapshot = metrics.Snapshot(
        servers={"source": True},
        replication=[metrics.Replication("db", "native", tables=by_state)],
    )
    families = list(exporter.MoveCollector("m", lambda: snapshot).collect())
    tables = next(f for f in families if f.name == "cutover_tables")
    assert sum(s.value for s in tables.samples) == len(table_states)
    assert {s.labels["state"] for s in tables.samples} == set(TableState)


@given(
    scope=st.text(min_size=1, max_size=20),
    phase=st.sampled_from(["prepare", "start", "switch", "cleanup"]),
    step=st.from_regex(r"[a-z]+(_[a-z]+)*", fullmatch=True),
)
def test_steps_recorded_without_phase_and_scope_are_read_back_from_their_key(
    tmp_path_factory: pytest.TempPathFactory, scope: str, phase: str, step: str
) -> None:
    journal = Journal(FileStore(tmp_path_factory.mktemp("ledger"), "m"), move="m")
    journal.started(f"{scope}/{phase}.{step}")  # as an older version recorded it
    journal.started(f"{scope}/{phase}.x", phase=phase, scope=scope)
    samples = {s.step: s for s in map(step_state, journal.steps().values())}
    assert (samples[step].scope, samples[step].phase) == (scope, phase)
    assert (samples["x"].scope, samples["x"].phase) == (scope, phase)


def test_a_managed_service_s_own_lag_is_exported_beside_the_exact_one_with_its_age() -> None:
    snapshot = metrics.Snapshot(
        servers={"source": True},
        replication=[
            metrics.Replication(
                "db",
                "dms",
                lag_bytes=120,
                monitored_lag_seconds=3.0,
                monitored_lag_bytes=4096,
                monitored_lag_age_seconds=140.0,
                service_state="RUNNING",
                service_phase="CDC",
            )
        ],
    )
    families = {f.name: f for f in exporter.MoveCollector("m", lambda: snapshot).collect()}
    values = {
        name: [s.value for s in families[name].samples]
        for name in (
            "cutover_replication_lag_bytes",
            "cutover_monitored_lag_seconds",
            "cutover_monitored_lag_bytes",
            "cutover_monitored_lag_sample_age_seconds",
        )
    }
    assert values == {
        "cutover_replication_lag_bytes": [120.0],
        "cutover_monitored_lag_seconds": [3.0],
        "cutover_monitored_lag_bytes": [4096.0],
        "cutover_monitored_lag_sample_age_seconds": [140.0],
    }
    [service] = families["cutover_service_state"].samples
    assert service.value == 1.0
    assert (service.labels["state"], service.labels["phase"]) == ("RUNNING", "CDC")
    # An engine without such figures exports none of them.
    plain = metrics.Snapshot(servers={}, replication=[metrics.Replication("db", "native")])
    names = {f.name: f for f in exporter.MoveCollector("m", lambda: plain).collect()}
    assert names["cutover_monitored_lag_seconds"].samples == []
    assert names["cutover_service_state"].samples == []


def test_the_switch_job_runs_a_plan_with_kubernetes_tiers_as_the_rbac_service_account(
    tmp_path: Path,
) -> None:
    documents = list(
        yaml.safe_load_all((REPO / "k8s" / "base" / "controller-job.yaml").read_text())
    )
    config_map = next(d for d in documents if d["kind"] == "ConfigMap")
    job = next(d for d in documents if d["kind"] == "Job")
    plan_path = tmp_path / "plan.yaml"
    plan_path.write_text(config_map["data"]["plan.yaml"])
    plan = load(plan_path)
    assert [w.kubernetes is not None for w in plan.writers] == [True, True]
    assert all(w.kubernetes and w.kubernetes.kubeconfig is None for w in plan.writers)
    assert plan.ledger.configmap is not None  # the ledger and its lock in the cluster
    assert plan.repoint[0].kubernetes is not None

    rbac = list(yaml.safe_load_all((REPO / "k8s" / "base" / "rbac.yaml").read_text()))
    account = next(d for d in rbac if d["kind"] == "ServiceAccount")
    binding = next(d for d in rbac if d["kind"] == "RoleBinding")
    pod = job["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == account["metadata"]["name"]
    assert binding["subjects"][0]["name"] == account["metadata"]["name"]
    container = pod["containers"][0]
    assert container["args"][:3] == ["switch", "--plan", "/etc/cutover/plan.yaml"]
    from_secret = {e["name"] for e in container["env"] if "secretKeyRef" in e.get("valueFrom", {})}
    for server in (plan.source, plan.target):
        assert server.password is not None
        assert server.password.removeprefix("env:") in from_secret
