"""A whole switch whose application runs as Deployments of the API server stand-in.

The lab's write load runs as the replicas of two Deployments in two tiers, their
connection strings from a Secret; the switch scales them to zero tier by tier (an
autoscaler held meanwhile), repoints the Secret's keys, and scales them back to
their recorded counts: the new pods read the target's address, and the write
audit finds every acknowledged write. The ledger is in ConfigMaps, and the
controller is killed after every step of the switch in turn, each next run going
one step further: each is a new process with nothing but the plan and another
state directory, as a Job's next pod would be, and after each kill the cluster is
as that step leaves it. A rollback then puts the Secret's values back exactly and
the application writes on the source again.
"""

import base64
import json
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml

from cutover import load, wait
from cutover.lab import Lab
from cutover.ledger import journal_for
from cutover.pg import load as load_sql
from cutover.plan import load as load_plan
from cutover.runner import FAILPOINT
from cutover.steps import SwitchStep as S
from cutover.writers.kubernetes import held_name
from tests.conftest import REPO, Databases, Result, connect
from tests.integration.conftest import KEEP_FALLBACK_WALK, TABLE_NAMES, TABLES
from tests.k8s.apiserver import ApiError, Cluster
from tests.k8s.workloads import autoscaler, deployment

NS = "shop"
pytestmark = pytest.mark.integration

# status --json is asked after the kills at the steps that act on the cluster; after
# the others the test reads the ConfigMap ledger itself: status takes 2.5 s a run.
CLUSTER_STEPS = {S.STOP_WRITERS, S.REPOINT, S.START_WRITERS}
WALK = KEEP_FALLBACK_WALK
# Steps whose effect the servers or the cluster show: the run after the kill adopts them.
OBSERVABLE = {S.COPY_SEQUENCES, S.PROMOTE, S.START_FALLBACK, S.REPOINT, S.RELEASE_SOURCE}
PAUSED = WALK[WALK.index(S.STOP_WRITERS) : WALK.index(S.START_WRITERS)]
REPOINTED = WALK[WALK.index(S.REPOINT) :]


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def until(probe: Callable[[], bool], timeout: float = 30.0) -> None:
    wait.until(probe, timeout=timeout, what="the cluster did not get there", hint="")


def app(name: str, replicas: int, logs: Path) -> dict[str, Any]:
    """A Deployment whose replicas run the write load, DSNs from the Secret `db`."""
    env = [
        {"name": key, "valueFrom": {"secretKeyRef": {"name": "db", "key": key}}}
        for key in ("DATABASE_URL", "WRITER_URL")
    ]
    env += [
        {"name": "LOG_DIR", "value": str(logs)},
        {"name": "TABLES", "value": ",".join(TABLE_NAMES)},
        {"name": "PYTHONPATH", "value": str(REPO)},
    ]
    return deployment(
        name, replicas, argv=[sys.executable, "-m", "tests.k8s.replica"], env=env, grace=10
    )


def test_a_switch_of_kubernetes_tiers_killed_at_every_step_then_rolled_back_loses_nothing(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    cluster: Cluster,
    kubeconfig: Path,
    tmp_path: Path,
) -> None:
    db = databases.create()
    role, password = f"app_{uuid.uuid4().hex[:6]}", uuid.uuid4().hex
    for side in ("source", "target"):
        with connect(lab.server(side)) as conn:
            load_sql.ensure_login_role(conn, role, password)  # type: ignore[arg-type]
    with connect(lab.server("source")) as conn:
        conn.execute(
            psycopg.sql.SQL("ALTER DATABASE {} OWNER TO {}").format(
                psycopg.sql.Identifier(db), psycopg.sql.Identifier(role)
            )
        )
    with connect(lab.server("source"), db) as conn:
        load_sql.create_schema(  # type: ignore[arg-type]
            conn, tables=TABLES, writer=role, owner=role, keyless=True
        )
    quoted_db = db.replace('"', "%22").replace(" ", "%20")
    dsn = f"postgresql://{role}:{password}@127.0.0.1:{lab.server('source').port}/{quoted_db}"
    cluster.create(
        "secrets",
        NS,
        {"metadata": {"name": "db"}, "data": {"DATABASE_URL": b64(dsn), "WRITER_URL": b64(dsn)}},
    )
    logs = tmp_path / "writes"
    logs.mkdir()
    cluster.create("deployments", NS, app("web", 2, logs))
    cluster.create("deployments", NS, app("worker", 1, logs))
    cluster.create("horizontalpodautoscalers", NS, autoscaler("web", "web", low=2, high=4))
    k8s = {"kubeconfig": str(kubeconfig), "namespace": NS}
    plan = write_plan(
        [db],
        writers=[
            {"name": "web", "tier": 0, "kubernetes": {**k8s, "deployments": ["web"]}},
            {"name": "worker", "tier": 1, "kubernetes": {**k8s, "deployments": ["worker"]}},
        ],
        repoint=[
            {"name": f"secret-{key.lower()}", "kubernetes": {**k8s, "secret": "db", "key": key}}
            for key in ("DATABASE_URL", "WRITER_URL")
        ],
        fence={"roles": [role]},
        # Each run before the promotion checks the lag again: no window to hold, seven times.
        thresholds={"lag_window": "0s", "switch_timeout": "10s", "drain_timeout": "20s"},
        ledger={"configmap": {**k8s, "lease_duration": "3s"}},
    )
    for command in ("prepare", "start"):
        done = cutover(command, "-p", str(plan), *(["--wait"] if command == "start" else []))
        assert done.code == 0, done.stdout + done.stderr
    source_port, target_port = lab.server("source").port, lab.server("target").port

    def acked(port: int) -> int:
        return sum(
            1
            for f in logs.glob("*.jsonl")
            for line in f.read_text().splitlines()
            if f'"port": {port}' in line and '"ack": true' in line
        )

    until(lambda: acked(source_port) > 50)
    cluster.requests.clear()
    hpa_before = cluster.get("horizontalpodautoscalers", NS, "web")["spec"]
    secret_before = cluster.get("secrets", NS, "db")["data"]

    def secret_on(port: int) -> bool:
        data = cluster.get("secrets", NS, "db")["data"]
        return all(
            f":{port}/" in base64.b64decode(data[k]).decode()
            for k in ("DATABASE_URL", "WRITER_URL")
        )

    # The controller killed after each step's work, before the ledger knew it, its
    # Lease still held: each next run is a new process on another "node", with an
    # empty state directory and nothing but the plan and the ConfigMap ledger; it
    # does the killed step again (or adopts it) and is killed after the next.
    for runs, step in enumerate(WALK, start=1):
        if step is S.COPY_SEQUENCES:  # a sequence moved in the pause: the copy has work
            with connect(lab.server("source"), db) as conn:  # a superuser: not fenced
                conn.execute("SELECT nextval('load_ticket_seq')")
        elsewhere = tmp_path / f"run{runs}.yaml"
        elsewhere.write_text(
            yaml.safe_dump(
                {**yaml.safe_load(plan.read_text()), "state_dir": str(tmp_path / f"run{runs}")}
            )
        )
        killed = cutover(
            "switch",
            "-p",
            str(elsewhere),
            "--yes",
            "--keep-fallback",
            env={FAILPOINT: f"all/switch.{step}@applied"},
            timeout=240,
        )
        assert killed.code == -9, f"{step}: {killed.stdout}{killed.stderr}"
        assert [r.key for r in journal_for(load_plan(plan)).running()] == [f"all/switch.{step}"]
        if step in CLUSTER_STEPS:
            status = json.loads(cutover("status", "-p", str(plan), "--json").stdout)
            assert status["interrupted"] == [f"all/switch.{step}"]  # read from the ConfigMap
        # The cluster as the step left it: the writers at 0, no pod left and the
        # autoscaler held from the stop to the start; the Secret on the target from
        # the repoint on.
        paused = step in PAUSED
        hpa = cluster.get("horizontalpodautoscalers", NS, "web")["spec"]
        assert hpa == (
            {
                **hpa_before,
                "scaleTargetRef": {**hpa_before["scaleTargetRef"], "name": held_name("web")},
            }
            if paused
            else hpa_before
        ), step
        for name, count in (("web", 2), ("worker", 1)):
            found = cluster.get("deployments", NS, name)
            assert found["spec"]["replicas"] == (0 if paused else count), (step, name)
            if not paused:  # before the stop, or ready again by the start
                assert found["status"]["readyReplicas"] == count, (step, name)
        if paused:  # drained: the stop waited for every pod to end
            assert cluster.select("pods", NS, "app in (web,worker)") == [], step
        if step in REPOINTED:
            assert secret_on(target_port), step
        else:
            assert cluster.get("secrets", NS, "db")["data"] == secret_before, step
        if step is S.START_WRITERS:
            until(lambda: acked(target_port) > 0)  # the pods it started write to the target

    switched = cutover("switch", "-p", str(plan), "--yes", "--keep-fallback", timeout=240)

    assert switched.code == 0, switched.stdout + switched.stderr
    assert "all/switch.start_writers" in switched.stdout  # done again from the record: idempotent
    journal = journal_for(load_plan(plan))
    switch_steps = {k: r for k, r in journal.steps().items() if k.startswith("all/switch.")}
    assert set(switch_steps) == {f"all/switch.{s}" for s in WALK}  # every step was killed
    for step in WALK:
        record = switch_steps[f"all/switch.{step}"]
        assert record.status == "done", step
        if step in OBSERVABLE:  # what the servers and the cluster show done: not done twice
            assert (record.outcome, record.runs) == ("adopted", 1), step
        else:  # done again by the run after its kill (start_writers from the record)
            assert (record.outcome, record.runs) == ("applied", 2), step
    assert password not in switched.stdout + switched.stderr
    for name, count in (("web", 2), ("worker", 1)):  # from the record, never the live zero
        found = cluster.get("deployments", NS, name)
        assert found["spec"]["replicas"] == count
        assert found["status"]["readyReplicas"] == count
    assert cluster.get("horizontalpodautoscalers", NS, "web")["spec"] == hpa_before
    until(lambda: acked(target_port) > 50)  # the new pods write to the target
    # The tiers stopped in order (web first) and started in reverse, through the scale.
    scaled = [
        p.split("/")[-2] for m, p in cluster.requests if m == "PATCH" and p.endswith("/scale")
    ]
    assert scaled.index("web") < scaled.index("worker")
    assert scaled[-2:] == ["worker", "web"]

    # And back: the Secret holds exactly what it held, the pods write to the source.
    on_target = acked(target_port)
    until(lambda: acked(target_port) > on_target + 30)
    rolled = cutover("rollback", "-p", str(plan), "--yes", timeout=240)
    assert rolled.code == 0, rolled.stdout + rolled.stderr
    assert cluster.get("secrets", NS, "db")["data"] == secret_before
    for name, count in (("web", 2), ("worker", 1)):
        assert cluster.get("deployments", NS, name)["spec"]["replicas"] == count
    assert cluster.get("horizontalpodautoscalers", NS, "web")["spec"] == hpa_before
    on_source = acked(source_port)
    until(lambda: acked(source_port) > on_source + 50)

    for name in ("web", "worker"):  # end the load cleanly, then audit every write
        cluster.update("deployments", NS, name, lambda o: o["spec"].update(replicas=0))
    cluster.update(
        "horizontalpodautoscalers",
        NS,
        "web",
        lambda o: o["spec"]["scaleTargetRef"].update(name="gone"),
    )
    until(lambda: not cluster.select("pods", NS, "app in (web,worker)"))
    merged = tmp_path / "writes.jsonl"
    merged.write_text("".join(f.read_text() for f in sorted(logs.glob("*.jsonl"))))
    with connect(lab.server("source"), db) as conn:  # every write, on either server, is here
        rows = {t: load_sql.rows(conn, t) for t in TABLE_NAMES}  # type: ignore[arg-type]
    outcome = load.audit(merged, rows, source_port=source_port, fenced_at=None)
    assert outcome.acknowledged > 200
    assert outcome.missing == []
    assert outcome.errors == []  # the pods were gone before each fence: nothing refused

    done = cutover("cleanup", "-p", str(plan), "--yes")
    assert done.code == 0, done.stdout + done.stderr
    assert "forget_previous secret-database_url" in done.stdout
    with pytest.raises(ApiError):  # no copy of the old connection strings is left
        cluster.get("secrets", NS, "db-cutover-previous")
    assert cluster.get("secrets", NS, "db")["data"] == secret_before
