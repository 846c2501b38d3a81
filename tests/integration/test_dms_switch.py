"""A move by the dms engine, end to end: prepare, start --wait, switch under the write load.

Google's APIs are the stand-in whose migration jobs are pglogical replication
between the lab's servers (tests/gcp/backend.py): the destination read-only
until the promotion, every object DMS made owned by `cloudsqlexternalsync`.
"""

import re
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from cutover.lab import Lab
from tests.conftest import Result, connect
from tests.integration.conftest import (
    Running,
    acked_on,
    audit,
    dms_section,
    replication_objects,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def engine() -> str:
    """under_load's move, by DMS."""
    return "dms"


@pytest.fixture
def plan_extra(lab: Lab, tmp_path: Path) -> Iterator[dict[str, Any]]:
    """The dms section, its stand-in served as long as the move lives."""
    with ExitStack() as stack:
        yield {"dms": dms_section(stack, lab, tmp_path)}


def test_a_dms_switch_under_load_loses_no_acknowledged_write(
    lab: Lab, under_load: Running, cutover: Callable[..., Result]
) -> None:
    status = cutover("status", "-p", str(under_load.plan))
    assert status.code == 0, status.stdout + status.stderr
    assert "DMS job" in status.stdout and "RUNNING/CDC" in status.stdout

    planned = cutover("switch", "-p", str(under_load.plan), "--dry-run")
    assert planned.code == 0, planned.stdout + planned.stderr
    promote = re.compile(r"datamigration: POST /v1/\S+/migrationJobs/cutover-[a-z0-9-]+:promote")
    assert promote.search(planned.stdout), planned.stdout  # the call it would send
    assert "RUNNING/CDC" in cutover("status", "-p", str(under_load.plan)).stdout  # sent none

    result = cutover("switch", "-p", str(under_load.plan), "--yes")
    assert result.code == 0, result.stdout + result.stderr
    assert "switched: writes paused" in result.stdout
    assert ":promote" in result.stdout  # the job's promotion, as the API call it was
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
