"""A move by the dms engine, end to end: prepare, start --wait, switch under the write load.

Google's APIs are the stand-in whose migration jobs are pglogical replication
between the lab's servers (tests/gcp/backend.py): the destination read-only
until the promotion, every object DMS made owned by `cloudsqlexternalsync`;
the destination instance's backups read off while it is DMS's replica.
"""

import json
import re
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from cutover.lab import Lab
from cutover.ledger import move_id
from cutover.plan import load
from cutover.steps import SwitchStep as S
from tests.conftest import Databases, Result, connect, move_of
from tests.gcp.standin import Standin
from tests.integration.conftest import (
    Running,
    acked_on,
    audit,
    dms_standin,
    ledger_of,
    ledger_of_plan,
    replication_objects,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def engine() -> str:
    """under_load's move, by DMS."""
    return "dms"


@pytest.fixture
def standin(lab: Lab, tmp_path: Path) -> Iterator[tuple[Standin, dict[str, Any]]]:
    """The lab-backed stand-in and the plan's dms section, served as long as the move lives."""
    with ExitStack() as stack:
        yield dms_standin(stack, lab, tmp_path)


@pytest.fixture
def plan_extra(standin: tuple[Standin, dict[str, Any]]) -> dict[str, Any]:
    """under_load's plan names the stand-in."""
    return {"dms": standin[1]}


def backup_settings(endpoint: str) -> dict[str, Any]:
    """The target instance's settings.backupConfiguration, as Cloud SQL Admin answers."""
    url = endpoint.rstrip("/") + "/v1/projects/lab-project/instances/lab-target"
    with urllib.request.urlopen(url, timeout=10) as answer:
        config: dict[str, Any] = json.load(answer)["settings"]["backupConfiguration"]
    return config


def target_runs(api: Standin) -> list[tuple[str, dict[str, Any]]]:
    """The target instance's backup runs, oldest first: (id, run)."""
    with api.lock:
        runs = [(i, run) for (name, i), run in api.backups.items() if name == "lab-target"]
    return sorted(runs, key=lambda r: int(r[0]))


def test_a_dms_switch_under_load_loses_no_acknowledged_write(
    lab: Lab,
    under_load: Running,
    standin: tuple[Standin, dict[str, Any]],
    cutover: Callable[..., Result],
) -> None:
    api, dms = standin
    endpoint = dms["api_endpoints"]["sqladmin"]
    backups = r"/instances/lab-target/backupRuns"
    move = f"{move_of(under_load.plan)} ({move_id(load(under_load.plan))})"
    description = f"cutover {move}: the new primary after the switch"
    before = backup_settings(endpoint)
    assert (before["enabled"], before["pointInTimeRecoveryEnabled"]) == (False, False)
    status = cutover("status", "-p", str(under_load.plan))
    assert status.code == 0, status.stdout + status.stderr
    assert "DMS job" in status.stdout and "RUNNING/CDC" in status.stdout
    scrape = cutover("metrics", "-p", str(under_load.plan), "--once")
    assert scrape.code == 0, scrape.stdout + scrape.stderr
    assert re.search(
        r'^cutover_service_state\{[^}]*engine="dms"[^}]*phase="CDC",state="RUNNING"\} 1\.0$',
        scrape.stdout,
        re.MULTILINE,
    ), scrape.stdout

    planned = cutover("switch", "-p", str(under_load.plan), "--dry-run")
    assert planned.code == 0, planned.stdout + planned.stderr
    promote = re.compile(r"datamigration: POST /v1/\S+/migrationJobs/cutover-[a-z0-9-]+:promote")
    assert promote.search(planned.stdout), planned.stdout  # the call it would send
    shown = " ".join(planned.stdout.split())
    assert '"enabled":true' in shown and '"pointInTimeRecoveryEnabled":true' in shown
    assert '"startTime":"03:00"' in shown  # the other fields sent back as read
    assert f"POST /v1/projects/lab-project{backups}" in shown and description in shown
    steps = re.findall(r"planned all/switch\.(\w+)", shown)
    order = [S.PROMOTE, S.ENABLE_TARGET_BACKUPS, S.REPOINT, S.START_WRITERS, S.BACK_UP_TARGET]
    assert [s for s in steps if s in order] == order  # backups on before the repoint
    assert steps[-1] == S.WAIT_FOR_TARGET_BACKUP  # the backup waited for at the very end
    assert "RUNNING/CDC" in cutover("status", "-p", str(under_load.plan)).stdout  # sent none
    assert target_runs(api) == [] and backup_settings(endpoint) == before

    # The new primary's backup fails: the switch is done all the same, with a warning.
    api.backup_errors["lab-target"] = "the backup disk is full"
    result = cutover("switch", "-p", str(under_load.plan), "--yes")
    assert result.code == 3, result.stdout + result.stderr
    assert ":promote" in result.stdout  # the job's promotion, as the API call it was
    ((failed_id, failed),) = target_runs(api)
    assert (failed["status"], failed["description"]) == ("FAILED", description)
    warning = " ".join(result.stderr.split())
    assert warning.startswith("WARNING: all/switch.wait_for_target_backup:"), warning
    assert f"backup run {failed_id}" in warning and "the backup disk is full" in warning
    assert ledger_of(under_load)["all/switch.wait_for_target_backup"]["status"] == "failed"
    after = backup_settings(endpoint)
    assert (after["enabled"], after["pointInTimeRecoveryEnabled"]) == (True, True)
    assert (after["startTime"], after["transactionLogRetentionDays"]) == ("03:00", 7)
    target_port = lab.server("target").port
    deadline = under_load.work.log.acked + 100
    while under_load.work.log.acked < deadline:
        under_load.work.stop.wait(0.1)
    under_load.stop()

    outcome = audit(lab, under_load)
    assert outcome.acknowledged > 300
    assert outcome.missing == []  # every acknowledged write is on the target
    assert outcome.after_fence == 0  # and the source took none after the fence
    # The application saw no error but those the fence ended: the clerk's table grants,
    # which DMS does not carry, were granted on the target before the writers came back.
    assert outcome.errors == []
    assert outcome.fenced_errors <= under_load.work.workers
    assert acked_on(under_load, target_port) > 50  # the application writes on the target

    # Run again once the cause is gone: the backup is taken anew and waited for.
    del api.backup_errors["lab-target"]
    again = cutover("switch", "-p", str(under_load.plan), "--yes")
    assert again.code == 0, again.stdout + again.stderr
    assert [r["status"] for _, r in target_runs(api)] == ["FAILED", "SUCCESSFUL"]
    assert len(api.requests_to("POST", backups)) == 2
    assert {r["status"] for k, r in ledger_of(under_load).items() if "/switch." in k} == {"done"}
    with (
        connect(lab.server("source"), under_load.db) as source,
        connect(lab.server("target"), under_load.db) as target,
    ):
        seqs = "SELECT sequencename AS name, last_value FROM pg_sequences ORDER BY 1"
        source_values = {r["name"]: r["last_value"] for r in source.execute(seqs)}
        target_values = {r["name"]: r["last_value"] for r in target.execute(seqs)}
        assert source_values.keys() == target_values.keys()
        behind = [n for n, v in source_values.items() if (target_values[n] or 0) < (v or 0)]
        assert behind == []  # copied right after the promotion
        owners = target.execute(
            "SELECT count(*) AS n FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE pg_get_userbyid(c.relowner) = 'cloudsqlexternalsync' "
            "AND n.nspname NOT IN ('pglogical', 'pg_catalog', 'information_schema')"
        ).fetchone()
        assert owners == {"n": 0}  # given back to the source's owners
        tables = target.execute(
            "SELECT DISTINCT tableowner FROM pg_tables WHERE tablename LIKE 'load\\_%%'"
        ).fetchall()
        assert [r["tableowner"] for r in tables] == [under_load.role]
    # The job stays until cleanup, which leaves no slot or subscription.
    cleaned = cutover("cleanup", "-p", str(under_load.plan), "--yes")
    assert cleaned.code == 0, cleaned.stdout + cleaned.stderr
    objects = replication_objects(lab, under_load.db)
    assert objects["slots"] == 0 and objects["subscriptions"] == 0
    # pglogical, which prepare made in every database of the source for DMS, is gone.
    with connect(lab.server("source")) as conn:
        names = [
            r["datname"]
            for r in conn.execute(
                "SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate"
            )
        ]
    mark = f"created by cutover for move {move_of(under_load.plan)}; dropped by cutover cleanup"
    for name in names:
        with connect(lab.server("source"), name) as conn:
            ours = conn.execute(
                "SELECT 1 FROM pg_extension WHERE obj_description(oid, 'pg_extension') = %s",
                (mark,),
            ).fetchone()
        assert ours is None, name


def test_keep_fallback_is_refused_with_its_reason_before_anything_changes(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    standin: tuple[Standin, dict[str, Any]],
) -> None:
    api, dms = standin
    db = databases.create()
    with connect(lab.server("source"), db) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    plan = write_plan([db], engine="dms", dms=dms)

    checked = cutover("check", "-p", str(plan), "--json")
    assert checked.code == 0, checked.stdout + checked.stderr  # a warning, not a blocker
    (fallback,) = [f for f in json.loads(checked.stdout)["findings"] if f["check"] == "fallback"]
    assert fallback["status"] == "WARN"
    assert fallback["detail"] == (
        "switch --keep-fallback would be refused: the dms engine replicates one way: DMS has "
        "no job from the new primary back to the source, so there is no `cutover rollback` "
        "after its switch"
    )
    assert "switch without --keep-fallback" in fallback["hint"]
    table = " ".join(cutover("check", "-p", str(plan)).stdout.split())
    assert "switch --keep-fallback would be refused: the dms engine replicates one way" in table

    refused = cutover("switch", "-p", str(plan), "--yes", "--keep-fallback")
    assert refused.code == 1, refused.stdout + refused.stderr
    error = " ".join(refused.stderr.split())
    assert error.startswith(
        "FAILED: all/switch.check_ready: --keep-fallback cannot replicate back to the source: "
        "the dms engine replicates one way"
    ), error
    assert "hint: nothing was stopped; switch without --keep-fallback" in error
    assert [r for r in api.requests if r.method != "GET"] == []  # nothing sent to Google
    records = ledger_of_plan(plan)
    assert {k: r["status"] for k, r in records.items() if "/switch." in k} == {
        "all/switch.check_ready": "failed"
    }
