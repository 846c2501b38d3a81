"""`cutover prepare` on real servers: the runner's promises, seen from outside."""

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from cutover.lab import Lab
from cutover.ledger import FileStore, Journal
from cutover.plan import dump
from tests.conftest import Databases, Result, connect, move_of
from tests.integration.conftest import ledger_of_plan

pytestmark = pytest.mark.integration


def database_exists(lab: Lab, side: str, name: str) -> bool:
    with connect(lab.server(side)) as conn:
        row = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone()
        return row is not None


def barrier_exists(lab: Lab, side: str, db: str) -> bool:
    with connect(lab.server(side), db) as conn:
        row = conn.execute("SELECT to_regclass('_cutover.barrier') AS t").fetchone()
        return row is not None and row["t"] is not None


def test_a_dry_run_prints_the_sql_and_changes_nothing(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    db = databases.create()
    plan = write_plan([db])
    result = cutover("prepare", "-p", str(plan), "--dry-run")
    assert result.code == 0, result.stderr
    quoted = '"' + db.replace('"', '""') + '"'
    assert f"target: CREATE DATABASE {quoted}" in result.stdout
    assert 'CREATE SCHEMA IF NOT EXISTS "_cutover"' in result.stdout
    assert "CREATE TABLE IF NOT EXISTS _cutover.barrier" in result.stdout
    assert "dry run: nothing was changed" in result.stdout
    assert not database_exists(lab, "target", db)
    assert not barrier_exists(lab, "source", db)
    assert not (plan.parent / "state").exists()


def test_prepare_applies_once_then_skips(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    db = databases.create()
    plan = write_plan([db])
    first = cutover("prepare", "-p", str(plan))
    assert first.code == 0, first.stderr
    assert database_exists(lab, "target", db)  # the awkward name arrived exactly
    assert barrier_exists(lab, "source", db) and barrier_exists(lab, "target", db)
    assert {k.split("/")[-1]: v["outcome"] for k, v in ledger_of_plan(plan).items()} == {
        "prepare.enable_logical_decoding": "adopted",  # the lab has wal_level = logical
        "prepare.create_target_database": "applied",
        "prepare.create_source_barrier": "applied",
        "prepare.install_engine": "adopted",  # the native engine needs nothing installed
        "prepare.create_replication_role": "applied",
        "prepare.copy_schema": "applied",
        "prepare.create_target_barrier": "applied",  # the schema copy leaves _cutover out
        "prepare.create_publication": "applied",
    }

    second = cutover("prepare", "-p", str(plan))
    assert second.code == 0
    assert second.stdout.count("skipped") == 8
    assert all(v["runs"] == 1 for v in ledger_of_plan(plan).values())

    # Dropped behind cutover's back: only that step runs again.
    with connect(lab.server("source"), db) as conn:
        conn.execute(f"DROP PUBLICATION cutover_{move_of(plan)}")
    third = cutover("prepare", "-p", str(plan))
    assert third.code == 0
    assert third.stdout.count("skipped") == 7
    assert f"applied {db}/prepare.create_publication" in third.stdout


def test_what_exists_is_adopted_and_a_failed_step_resumes(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    db = databases.create()
    # The target database exists already but refuses connections: step 3 must fail.
    with connect(lab.server("target")) as conn:
        conn.execute(
            f'CREATE DATABASE "{db.replace(chr(34), chr(34) * 2)}" ALLOW_CONNECTIONS false'
        )
    plan = write_plan([db])

    failed = cutover("prepare", "-p", str(plan))
    assert failed.code == 1
    assert failed.stderr.startswith(f"FAILED: {db}/prepare.copy_schema: cannot connect")
    assert "Traceback" not in failed.stderr
    steps = ledger_of_plan(plan)
    assert steps[f"{db}/prepare.create_target_database"]["outcome"] == "adopted"
    assert steps[f"{db}/prepare.create_source_barrier"]["outcome"] == "applied"
    assert steps[f"{db}/prepare.copy_schema"]["status"] == "failed"

    status = cutover("status", "-p", str(plan), "--json")
    recorded = {s["key"]: s for s in json.loads(status.stdout)["steps"]}
    assert recorded[f"{db}/prepare.copy_schema"]["error"].startswith("cannot connect")

    with connect(lab.server("target")) as conn:
        conn.execute(f'ALTER DATABASE "{db.replace(chr(34), chr(34) * 2)}" ALLOW_CONNECTIONS true')
    resumed = cutover("prepare", "-p", str(plan))
    assert resumed.code == 0, resumed.stderr
    steps = ledger_of_plan(plan)
    assert steps[f"{db}/prepare.create_source_barrier"]["runs"] == 1  # not repeated
    assert steps[f"{db}/prepare.copy_schema"]["runs"] == 2  # failed once, then done
    assert steps[f"{db}/prepare.create_publication"]["status"] == "done"
    assert barrier_exists(lab, "target", db)


def test_a_second_runner_is_refused_while_one_holds_the_move(
    databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    plan = write_plan([databases.create()])
    with FileStore(plan.parent / "state", move_of(plan)).lock():
        result = cutover("prepare", "-p", str(plan))
    assert result.code == 2
    assert result.stderr.startswith("FAILED: this move is being run by")


def test_status_shows_steps_and_says_loudly_when_a_run_was_interrupted(
    databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> None:
    plan = write_plan([databases.create()])
    empty = cutover("status", "-p", str(plan))
    assert empty.code == 0 and "nothing has run yet" in empty.stdout
    assert cutover("prepare", "-p", str(plan)).code == 0
    # A controller killed in the middle of a step leaves it `running`.
    move = move_of(plan)
    Journal(FileStore(plan.parent / "state", move), move=move).started("x/switch.fence_source")
    result = cutover("status", "-p", str(plan))
    assert result.code == 0
    assert "prepare.create_publication" in result.stdout
    assert "INTERRUPTED: a run stopped during x/switch.fence_source" in result.stdout
    as_json = json.loads(cutover("status", "-p", str(plan), "--json").stdout)
    assert as_json["interrupted"] == ["x/switch.fence_source"]
    assert len(as_json["steps"]) == 9


def test_wal_level_is_set_but_the_source_restarts_only_with_restart(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path, cutover: Callable[..., Result]
) -> None:
    replica = Lab(tmp_path_factory.mktemp("replica"), settings={"wal_level": "replica"})
    replica.up(sample=False)
    try:
        with connect(replica.server("source")) as conn:
            conn.execute('CREATE DATABASE "shop"')
        plan = tmp_path / "plan.yaml"
        data = yaml.safe_load(dump(replica.plan(["shop"], move="restart")))
        data["state_dir"] = str(tmp_path / "state")
        plan.write_text(yaml.safe_dump(data))

        refused = cutover("prepare", "-p", str(plan))
        assert refused.code == 1
        assert "takes effect when the source restarts" in refused.stderr
        with connect(replica.server("source")) as conn:
            pending = conn.execute(
                "SELECT setting FROM pg_file_settings WHERE name = 'wal_level' "
                "AND sourcefile LIKE '%%postgresql.auto.conf' AND applied IS FALSE"
            ).fetchone()
            current = conn.execute("SELECT current_setting('wal_level') AS w").fetchone()
        assert pending == {"setting": "logical"}  # written, not yet in force
        assert current == {"w": "replica"}  # no restart without --restart

        restarted = cutover("prepare", "-p", str(plan), "--restart")
        assert restarted.code == 0, restarted.stdout + restarted.stderr
        assert "lab restart source" in restarted.stdout
        with connect(replica.server("source")) as conn:
            row = conn.execute("SELECT current_setting('wal_level') AS w").fetchone()
        assert row == {"w": "logical"}
    finally:
        replica.down(purge=True)
