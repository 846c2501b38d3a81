"""prepare of a dms move: the source backed up, its flags set, pglogical everywhere.

The flags that let DMS decode restart the instance: nothing is sent without
--restart, a dry run shows the calls, and the flag list is read, merged and
written whole (a patch replaces it), the instance's other flags kept. Before
anything changes the source, an on-demand backup of it is taken (the stand-in
dumps every database), once even when prepare is killed in the call; then
pglogical is created in every database of the source instance, as DMS needs.
"""

import json
import subprocess
import urllib.request
from collections.abc import Callable
from contextlib import ExitStack
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from cutover.lab import Lab
from cutover.ledger import move_id
from cutover.pg import tools
from cutover.plan import load
from tests.conftest import Databases, Result, connect, move_of
from tests.gcp.backend import PglogicalJobs
from tests.integration.conftest import dms_section, dms_standin, ledger_of_plan

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


def has_pglogical(lab: Lab, db: str) -> bool:
    with connect(lab.server("source"), db) as conn:
        found = conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'pglogical'").fetchone()
    return found is not None


def dumped_database(path: Path) -> tuple[str, str]:
    """The name of the database a backup file holds, and its table of contents."""
    listing = subprocess.run(
        [str(tools.bindir() / "pg_restore"), "--list", str(path)],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    name = next(line.split(":", 1)[1].strip() for line in listing.splitlines() if "dbname:" in line)
    return name, listing


def test_the_source_is_backed_up_once_before_prepare_changes_it_and_pglogical_is_everywhere(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    tmp_path: Path,
) -> None:
    with ExitStack() as stack:
        api, dms = dms_standin(stack, lab, tmp_path)
        db = databases.create()
        other = databases.create()  # not moved: DMS still wants pglogical in it
        with connect(lab.server("source"), db) as conn:
            conn.execute("CREATE TABLE t (id int PRIMARY KEY)")
        plan = write_plan([db], engine="dms", dms=dms)
        move = f"{move_of(plan)} ({move_id(load(plan))})"
        description = f"cutover {move}: the source before prepare changes it"
        backups = r"/instances/lab-source/backupRuns"

        dry = cutover("prepare", "-p", str(plan), "--dry-run")
        assert dry.code == 0, dry.stdout + dry.stderr
        shown = " ".join(dry.stdout.split())
        assert "planned all/prepare.back_up_source" in shown
        assert f"POST /v1/projects/lab-project{backups}" in shown and description in shown
        assert f"source/{other}" in shown  # pglogical where it lacks, beyond the move's
        assert "source/postgres" in shown or has_pglogical(lab, "postgres")
        assert api.backups == {} and not has_pglogical(lab, other)  # a dry run sends nothing

        # Killed in the backup's call: the backup runs on, the answer never came back.
        api.kill("POST", backups, running=True)
        killed = cutover("prepare", "-p", str(plan))
        assert killed.code == -9, killed.stdout + killed.stderr
        records = ledger_of_plan(plan)
        assert records["all/prepare.back_up_source"]["status"] == "running"
        assert not has_pglogical(lab, db)  # nothing after the backup ran

        prepared = cutover("prepare", "-p", str(plan))
        assert prepared.code == 0, prepared.stdout + prepared.stderr
        again = cutover("prepare", "-p", str(plan))
        assert again.code == 0, again.stdout + again.stderr

        assert len(api.requests_to("POST", backups)) == 1  # asked for once, waited for twice
        ((instance, backup_id), run), *more = api.backups.items()
        assert more == [] and instance == "lab-source"
        assert (run["status"], run["description"]) == ("SUCCESSFUL", description)
        assert ledger_of_plan(plan)["all/prepare.back_up_source"]["status"] == "done"
        # A real dump of every database, taken before prepare made pglogical in any.
        assert isinstance(api.instance_backend, PglogicalJobs)
        dumps = dict(
            dumped_database(f) for f in api.instance_backend.backups[(instance, backup_id)]
        )
        assert {db, other, "postgres"} <= dumps.keys()
        assert "EXTENSION - pglogical" not in dumps[db] and "TABLE public t" in dumps[db]
        for name in (db, other, "postgres"):
            assert has_pglogical(lab, name), name  # every database of the instance

        # Given up before start: cleanup takes back what prepare made, though DMS never
        # made the target's database.
        cleaned = cutover("cleanup", "-p", str(plan), "--yes")
        assert cleaned.code == 0, cleaned.stdout + cleaned.stderr
        for name in (db, other):
            assert not has_pglogical(lab, name), name
