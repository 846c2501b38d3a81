"""prepare of a dms move sets the source instance's flags through Cloud SQL Admin.

The flags that let DMS decode restart the instance: nothing is sent without
--restart, a dry run shows the calls, and the flag list is read, merged and
written whole (a patch replaces it), the instance's other flags kept.
"""

import json
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from cutover.lab import Lab
from tests.conftest import Databases, Result, connect
from tests.integration.conftest import dms_section

pytestmark = pytest.mark.integration

OTHER_FLAG = {"log_min_duration_statement": "2500"}


def flags(endpoint: str) -> dict[str, str]:
    """The source instance's flags, as Cloud SQL Admin answers."""
    url = endpoint.rstrip("/") + "/v1/projects/lab-project/instances/lab-source"
    with urllib.request.urlopen(url, timeout=10) as answer:
        settings = json.load(answer)["settings"]
    return {f["name"]: f["value"] for f in settings.get("databaseFlags", [])}


def started_at(lab: Lab) -> datetime:
    with connect(lab.server("source")) as conn:
        row = conn.execute("SELECT pg_postmaster_start_time() AS t").fetchone()
    assert row is not None
    return row["t"]  # type: ignore[no-any-return]


def test_the_flags_wait_for_restart_then_are_merged_and_the_source_restarted(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    tmp_path: Path,
) -> None:
    with ExitStack() as stack:
        dms = dms_section(stack, lab, tmp_path, flags=dict(OTHER_FLAG))
        run_prepare(lab, databases, write_plan, cutover, dms)


def run_prepare(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    dms: dict[str, Any],
) -> None:
    endpoint = dms["api_endpoints"]["sqladmin"]
    db = databases.create()
    with connect(lab.server("source"), db) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
    plan = str(write_plan([db], engine="dms", dms=dms))

    refused = cutover("prepare", "-p", plan)
    assert refused.code == 1, refused.stdout + refused.stderr
    assert "needs the flags cloudsql.logical_decoding=on, cloudsql.enable_pglogical=on" in (
        refused.stderr.replace("\n", " ")
    )
    assert "cutover prepare --restart" in refused.stderr
    assert flags(endpoint) == OTHER_FLAG  # nothing patched

    dry = cutover("prepare", "-p", plan, "--dry-run", "--restart")
    assert dry.code == 0, dry.stdout + dry.stderr
    assert "PATCH" in dry.stdout and "cloudsql.enable_pglogical" in dry.stdout
    assert "log_min_duration_statement" in dry.stdout  # the whole list, the other flag kept
    assert "POST /v1/projects/lab-project/instances/lab-source/restart" in dry.stdout
    before = started_at(lab)

    prepared = cutover("prepare", "-p", plan, "--restart", timeout=300)
    assert prepared.code == 0, prepared.stdout + prepared.stderr
    after = started_at(lab)
    assert after > before  # restarted once the flags were set
    assert flags(endpoint) == {
        **OTHER_FLAG,
        "cloudsql.logical_decoding": "on",
        "cloudsql.enable_pglogical": "on",
    }
    again = cutover("prepare", "-p", plan, "--restart")
    assert again.code == 0, again.stdout + again.stderr
    assert started_at(lab) == after  # nothing more to do: no second restart
