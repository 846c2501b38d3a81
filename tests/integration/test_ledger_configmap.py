"""The ledger in ConfigMaps, its lock a Lease, through the real client against the stand-in."""

import json
import os
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from cutover.errors import LedgerLocked, StepFailed
from cutover.ledger import Journal, store_for
from cutover.ledger.configmap import LOG, PACKED, ConfigMapStore
from cutover.plan import ConfigMapLedger, parse
from cutover.steps import Outcome
from tests.k8s.apiserver import Cluster

NS = "cutover"


def spec(kubeconfig: Path) -> ConfigMapLedger:
    return ConfigMapLedger(kubeconfig=kubeconfig, namespace=NS, lease_duration=3)


def opened(kubeconfig: Path) -> Journal:
    """The move's ledger as a new command reads it from the ConfigMap."""
    return Journal(ConfigMapStore(spec(kubeconfig), "shop_2026"), move="shop_2026")


def stop_writers(journal: Journal) -> None:
    """The switch's first step recorded: running, then applied."""
    journal.started("all/switch.stop_writers", phase="switch", scope="all")
    journal.finished("all/switch.stop_writers", outcome=Outcome.APPLIED, seconds=0.5)


def test_the_plan_chooses_the_configmap_store(kubeconfig: Path) -> None:
    plan = parse(
        {
            "move": "shop_2026",
            "source": {"host": "a", "user": "u"},
            "target": {"host": "b", "user": "u"},
            "databases": ["db"],
            "ledger": {"configmap": {"kubeconfig": str(kubeconfig), "namespace": NS}},
        }
    )
    assert store_for(plan).describe() == f"configmap {NS}/cutover-shop-2026-ledger"
    assert store_for(plan, "writers").describe() == f"configmap {NS}/cutover-shop-2026-writers"


def test_a_journal_is_written_through_and_read_back(cluster: Cluster, kubeconfig: Path) -> None:
    store = ConfigMapStore(spec(kubeconfig), "shop_2026")
    with store.lock():
        journal = Journal(store, move="shop_2026")
        stop_writers(journal)

    again = opened(kubeconfig)
    assert again.is_done("all/switch.stop_writers")
    assert again.id == journal.id
    stored = cluster.get("configmaps", NS, "cutover-shop-2026-ledger")
    assert "document.json" in stored["data"]


def test_a_record_is_one_update_of_the_log_key_and_the_close_folds_it_in(
    cluster: Cluster, kubeconfig: Path
) -> None:
    store = ConfigMapStore(spec(kubeconfig), "shop_2026")
    name = "/api/v1/namespaces/cutover/configmaps/cutover-shop-2026-ledger"
    with store.lock():
        journal = Journal(store, move="shop_2026")
        stop_writers(journal)  # the document
        del cluster.requests[:]
        journal.started("all/switch.fence_source", phase="switch", scope="all")
        # One request, neither read first nor the document sent again: the line goes to the
        # log key of the ConfigMap as this store last wrote it.
        assert [r for r in cluster.requests if r[1] == name] == [("PUT", name)]
        stored = cluster.get("configmaps", NS, "cutover-shop-2026-ledger")
        assert len(stored["data"][LOG].splitlines()) == 2
        # A command killed now: the next reads the document and its log.
        again = opened(kubeconfig)
        assert again.is_done("all/switch.stop_writers")
        assert [r.key for r in again.running()] == ["all/switch.fence_source"]
        journal.close()
    stored = cluster.get("configmaps", NS, "cutover-shop-2026-ledger")
    assert set(stored["data"]) == {"document.json"}  # folded in
    document = json.loads(stored["data"]["document.json"])
    assert [e["outcome"] for e in document["events"]] == ["running", "applied", "running"]


def test_a_ledger_configmap_deleted_during_a_command_is_written_anew_whole(
    cluster: Cluster, kubeconfig: Path
) -> None:
    journal = opened(kubeconfig)
    stop_writers(journal)
    cluster.delete("configmaps", NS, "cutover-shop-2026-ledger")  # by an operator
    journal.started("all/switch.fence_source", phase="switch", scope="all")  # no error
    again = opened(kubeconfig)
    assert again.is_done("all/switch.stop_writers")
    assert [r.key for r in again.running()] == ["all/switch.fence_source"]


def test_an_append_that_meets_an_operator_s_edit_writes_the_ledger_s_own_view_whole(
    cluster: Cluster, kubeconfig: Path
) -> None:
    journal = opened(kubeconfig)
    journal.started("all/switch.stop_writers", phase="switch", scope="all")
    older = cluster.get("configmaps", NS, "cutover-shop-2026-ledger")["data"]["document.json"]
    journal.finished("all/switch.stop_writers", outcome=Outcome.APPLIED, seconds=0.5)
    journal.close()  # the document whole again: another generation than the older one's
    journal.note("test", detail="appended")
    # Just before the next append, an operator applies the older document again.
    cluster.interfere[("configmaps", "cutover-shop-2026-ledger")] = lambda found: found[
        "data"
    ].update({"document.json": older})
    journal.started("all/switch.fence_source", phase="switch", scope="all")
    again = opened(kubeconfig)
    assert again.steps() == journal.steps() and again.events() == journal.events()
    assert again.is_done("all/switch.stop_writers")


def test_the_records_of_hundreds_of_databases_fit_a_configmap_gzipped(
    cluster: Cluster, kubeconfig: Path
) -> None:
    # Twelve steps of 400 databases, each started and finished: 2.4 MB of JSON, which the
    # API server refuses plain (over 1 MiB).
    at, actor = "2026-11-28T10:00:00.000+00:00", "cutover@pod-7f9c pid 1"
    steps, events = {}, []
    for db in range(400):
        for step in range(12):
            key = f"tenant_{db}/start.step_{step}"
            steps[key] = {"key": key, "status": "done", "started_at": at, "ended_at": at}
            steps[key].update(seconds=0.25, outcome="applied", scope=f"tenant_{db}")
            events += [
                {"at": at, "actor": actor, "kind": "step", "key": key, "outcome": "running"},
                {"at": at, "actor": actor, "kind": "step", "key": key, "outcome": "applied"},
            ]
    document = {"format": 1, "move": "shop_2026", "id": "0a1b", "steps": steps, "events": events}
    text = json.dumps(document)
    assert len(text) > 2_000_000

    store = ConfigMapStore(spec(kubeconfig), "shop_2026")
    store.write('{"move":"shop_2026","steps":{},"events":[]}')  # plain while small
    store.write(text)
    stored = cluster.get("configmaps", NS, "cutover-shop-2026-ledger")
    assert set(stored.get("data") or {}) == set() and set(stored["binaryData"]) == {PACKED}
    again = opened(kubeconfig)
    assert len(again.steps()) == 4_800 and len(again.events()) == 9_600
    record = again.get("tenant_399/start.step_11")
    assert record is not None and record.outcome is Outcome.APPLIED

    # A document that does not fit even gzipped is refused with its size; the stored one stays.
    events.append({"at": at, "actor": actor, "kind": "note", "detail": os.urandom(2**20).hex()})
    with pytest.raises(StepFailed, match=r"over the 1 MiB a ConfigMap holds") as refused:
        store.write(json.dumps(document))
    assert "file" in refused.value.hint
    assert len(Journal(store, move="shop_2026").events()) == 9_600


def test_a_second_run_is_refused_while_the_first_holds_the_lease(
    cluster: Cluster, kubeconfig: Path
) -> None:
    first = ConfigMapStore(spec(kubeconfig), "m")
    with first.lock():
        lease = cluster.get("leases", NS, "cutover-m")
        began = time.monotonic()
        with pytest.raises(LedgerLocked) as refused:  # another process: another identity
            ConfigMapStore(spec(kubeconfig), "m")._acquire("other@host pid 2")
        assert lease["spec"]["holderIdentity"] in refused.value.message
        assert time.monotonic() - began < 2.5  # told at the holder's next renewal (1 s)
    assert not cluster.get("leases", NS, "cutover-m")["spec"].get("holderIdentity")
    with ConfigMapStore(spec(kubeconfig), "m").lock():  # released: free again
        pass


def test_a_lease_its_holder_stopped_renewing_is_taken_over(
    cluster: Cluster, kubeconfig: Path
) -> None:
    stale = (datetime.now(UTC) - timedelta(seconds=60)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    cluster.create(
        "leases",
        NS,
        {
            "metadata": {"name": "cutover-m"},
            "spec": {
                "holderIdentity": "dead@host pid 1",
                "leaseDurationSeconds": 3,
                "renewTime": stale,
            },
        },
    )
    with ConfigMapStore(spec(kubeconfig), "m").lock():
        holder = cluster.get("leases", NS, "cutover-m")["spec"]["holderIdentity"]
        assert holder != "dead@host pid 1"


def test_the_holder_renews_its_lease_while_it_runs(cluster: Cluster, kubeconfig: Path) -> None:
    with ConfigMapStore(spec(kubeconfig), "m").lock():
        before = cluster.get("leases", NS, "cutover-m")["spec"]["renewTime"]
        time.sleep(2.5)  # a third of the 3 s lease passed twice
        after = cluster.get("leases", NS, "cutover-m")["spec"]["renewTime"]
    assert after > before


def test_a_run_started_just_after_its_holder_was_killed_takes_the_lease_when_it_expires(
    cluster: Cluster, kubeconfig: Path
) -> None:
    """A Job's new pod comes before its killed predecessor's Lease expired: it waits, then runs."""
    just_now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    cluster.create(
        "leases",
        NS,
        {
            "metadata": {"name": "cutover-m"},
            "spec": {
                "holderIdentity": "killed@node-a pid 7",
                "leaseDurationSeconds": 3,
                "renewTime": just_now,
            },
        },
    )
    began = time.monotonic()
    with ConfigMapStore(spec(kubeconfig), "m").lock():
        waited = time.monotonic() - began
        holder = cluster.get("leases", NS, "cutover-m")["spec"]["holderIdentity"]
    assert holder != "killed@node-a pid 7"
    assert 2.0 < waited < 5.0  # until the Lease expired, not at once and not for long
