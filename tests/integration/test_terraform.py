"""The Terraform runner with the real binary, on a module of Terraform's own resources."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from cutover.cloud.terraform import VARS_FILE, Terraform, refuse_destroys
from cutover.errors import PreconditionFailed
from cutover.lab import Lab
from cutover.phases import terraform as terraforming
from cutover.plan import parse
from cutover.runner import FAILPOINT
from tests.conftest import REPO, Databases, Result, connect, move_of
from tests.gcp.standin import PROJECT, InMemoryJobs, Standin, dms_settings

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("terraform") is None, reason="no terraform binary here"),
]

MODULE = Path(__file__).resolve().parents[1] / "terraform" / "module"
MOVE = "shop_2026"
VARS = {"cutover_move": "m1", "source_database_flags": {"cloudsql.logical_decoding": "on"}}


@pytest.fixture
def module(tmp_path: Path) -> Terraform:
    """A copy of the test module, initialised (it needs no provider download)."""
    directory = tmp_path / "module"
    shutil.copytree(MODULE, directory)
    tf = Terraform(directory)
    tf.init()
    return tf


def state(tf: Terraform) -> list[str]:
    if not (tf.directory / "terraform.tfstate").exists():
        return []
    listed = subprocess.run(
        ["terraform", f"-chdir={tf.directory}", "state", "list"],
        capture_output=True,
        text=True,
        check=True,
    )
    return sorted(listed.stdout.split())


def test_variables_are_planned_shown_applied_and_applying_again_changes_nothing(
    module: Terraform,
) -> None:
    module.write_vars(VARS, dry_run=False)
    assert module.vars_written(VARS)
    assert json.loads((module.directory / VARS_FILE).read_text()) == VARS

    dry = module.converge(dry_run=True)
    assert [c.action for c in dry] == [
        "create terraform_data.source",
        "create terraform_data.target",
    ]
    assert state(module) == []  # a dry run only planned

    module.converge(dry_run=False)
    assert state(module) == ["terraform_data.source", "terraform_data.target"]
    assert (module.directory / "applied-m1").read_text().strip() == "m1"
    assert module.converged()
    assert [c.action for c in module.converge(dry_run=False)] == ["no changes"]

    flags = {**VARS, "source_database_flags": {"cloudsql.logical_decoding": "on", "x": "1"}}
    module.write_vars(flags, dry_run=False)
    assert [c.action for c in module.converge(dry_run=False)] == ["update terraform_data.source"]
    assert module.converged()


def test_a_plan_that_would_replace_anything_is_refused_and_nothing_is_applied(
    module: Terraform,
) -> None:
    module.write_vars(VARS, dry_run=False)
    module.converge(dry_run=False)
    before = json.loads((module.directory / "terraform.tfstate").read_text())["resources"]

    module.write_vars({**VARS, "target_tier": "db-custom-4-15360"}, dry_run=False)
    with pytest.raises(PreconditionFailed) as refused:
        module.converge(dry_run=False)
    assert "would destroy or replace terraform_data.target" in refused.value.message
    assert "nothing was applied" in refused.value.message
    after = json.loads((module.directory / "terraform.tfstate").read_text())["resources"]
    assert after == before


def test_the_destroy_of_one_address_destroys_exactly_that_one(module: Terraform) -> None:
    module.write_vars(VARS, dry_run=False)
    module.converge(dry_run=False)
    planned = module.plan(destroy=True, targets=["terraform_data.source"])
    assert planned.destroyed() == ["terraform_data.source"]
    with pytest.raises(PreconditionFailed):  # asked for another address: refused
        refuse_destroys(planned, allowed=["terraform_data.target"])

    module.converge(
        destroy=True,
        targets=["terraform_data.source"],
        allowed_destroys=["terraform_data.source"],
        dry_run=False,
    )
    assert state(module) == ["terraform_data.target"]
    with pytest.raises(PreconditionFailed):  # a whole destroy takes the target too
        module.converge(destroy=True, allowed_destroys=["terraform_data.source"], dry_run=True)
    assert state(module) == ["terraform_data.target"]


def test_a_controller_killed_in_the_middle_of_an_apply_finishes_when_run_again(
    module: Terraform,
) -> None:
    module.write_vars({**VARS, "apply_seconds": 3}, dry_run=False)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path; from cutover.cloud.terraform import Terraform;"
            "Terraform(Path(sys.argv[1])).converge(dry_run=False)",
            str(module.directory),
        ],
        cwd=REPO,
        env={**os.environ},
    )
    deadline = time.monotonic() + 60
    lock = module.directory / ".terraform.tfstate.lock.info"
    while not lock.exists():  # the apply holds the state's lock
        assert time.monotonic() < deadline and child.poll() is None
        time.sleep(0.05)
    time.sleep(0.5)
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert not (module.directory / "applied-m1").exists()  # killed before the apply's end

    # Run again: it waits for the lock of the Terraform still running, then finds it done.
    module.converge(dry_run=False)
    assert state(module) == ["terraform_data.source", "terraform_data.target"]
    assert (module.directory / "applied-m1").exists()
    assert module.converged()


def inputs(tf: Terraform) -> dict[str, Any]:
    """Each terraform_data resource's input, as the state holds it."""
    held = json.loads((tf.directory / "terraform.tfstate").read_text())["resources"]
    return {r["name"]: r["instances"][0]["attributes"]["input"]["value"] for r in held}


def test_a_move_changes_its_instances_through_terraform_and_retires_exactly_the_source(
    module: Terraform,
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
) -> None:
    """prepare plans and shows, applies with --yes; the switch turns the target's backups on;
    cleanup --retire-source destroys the source alone, or nothing when more would go."""
    module.write_vars({"cutover_move": "before"}, dry_run=False)
    module.converge(dry_run=False)  # the instances exist before the move
    db = databases.create()
    with connect(lab.server("source"), db) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
    secret = f"tf-{uuid.uuid4().hex[:8]}"
    section = {
        "directory": str(module.directory),
        "source_address": "terraform_data.source",
        "source_database_flags": {"max_connections": "200"},
        "env": {"TF_VAR_migration_password": "env:MIGRATION_SECRET"},
    }
    plan = str(write_plan([db], terraform=section, thresholds={"lag_window": "0s"}))
    env = {"MIGRATION_SECRET": secret}
    flags = {
        "max_connections": "200",
        "cloudsql.logical_decoding": "on",
        "cloudsql.enable_pglogical": "on",
    }

    dry = cutover("prepare", "-p", plan, "--dry-run", env=env)
    assert dry.code == 0, dry.stdout + dry.stderr
    assert f"write {module.vars_path}: cutover_move, source_database_flags" in dry.stdout
    assert module.vars_written({"cutover_move": "before"})  # a dry run writes nothing
    shown = cutover("prepare", "-p", plan, env=env)
    assert shown.code == 4, shown.stdout + shown.stderr
    said = " ".join(shown.stderr.split())
    assert "PLANNED: all/prepare.terraform_source_flags: Terraform's plan in" in said
    assert "update terraform_data.source (a change of cloudsql.logical_decoding" in said
    assert "nothing was applied hint: read it" in said and "`cutover prepare --yes`" in said
    assert inputs(module)["source"]["flags"] == {}  # nothing applied without --yes
    assert "create_publication" not in shown.stdout  # the databases wait for the flags

    killed = cutover(  # killed once Terraform applied, before the ledger knew
        "prepare",
        "-p",
        plan,
        "--yes",
        env={**env, FAILPOINT: "all/prepare.terraform_source_flags@applied"},
    )
    assert killed.code == -signal.SIGKILL
    assert inputs(module)["source"]["flags"] == flags
    prepared = cutover("prepare", "-p", plan, "--yes", env=env)
    assert prepared.code == 0, prepared.stdout + prepared.stderr
    assert "adopted all/prepare.terraform_source_flags" in " ".join(prepared.stdout.split())
    written = json.loads(module.vars_path.read_text())
    assert written == {"cutover_move": move_of(Path(plan)), "source_database_flags": flags}

    refused = cutover("cleanup", "-p", plan, "--retire-source", "--yes", env=env)
    assert refused.code == 1 and "has not promoted the target" in refused.stderr
    assert cutover("start", "-p", plan, "--wait", env=env).code == 0
    switched = cutover("switch", "-p", plan, "--yes", env=env)
    assert switched.code == 0, switched.stdout + switched.stderr
    assert "applied all/switch.enable_target_backups" in " ".join(switched.stdout.split())
    assert inputs(module)["target"] == {"backups": True, "point_in_time_recovery": True}

    before = inputs(module)
    dry = cutover("cleanup", "-p", plan, "--retire-source", "--dry-run", env=env)
    assert dry.code == 0, dry.stdout + dry.stderr
    listed = " ".join(dry.stdout.split())
    for step in ("back_up_source", "lift_deletion_protection", "retire_source"):
        assert f"planned all/cleanup.{step}" in listed
    assert "plan -destroy -target=terraform_data.source" in listed
    assert inputs(module) == before

    # A resource that depends on the source: destroying the source would take it too.
    main = module.directory / "main.tf"
    kept = main.read_text()
    main.write_text(
        kept + 'resource "terraform_data" "replica" { input = terraform_data.source.id }\n'
    )
    module.converge(dry_run=False)
    guarded = cutover("cleanup", "-p", plan, "--retire-source", "--yes", env=env)
    assert guarded.code == 1, guarded.stdout + guarded.stderr
    assert (  # refused before the backup and the protection's lift
        "FAILED: all/cleanup.back_up_source: the Terraform plan would destroy or replace "
        "terraform_data.replica (only terraform_data.source may go); nothing was applied"
        in " ".join(guarded.stderr.split())
    )
    assert state(module) == [f"terraform_data.{n}" for n in ("replica", "source", "target")]
    assert inputs(module)["source"]["deletion_protection"] is True  # nothing applied
    main.write_text(kept)
    module.converge(allowed_destroys=["terraform_data.replica"], dry_run=False)

    killed = cutover(
        "cleanup",
        "-p",
        plan,
        "--retire-source",
        "--yes",
        env={**env, FAILPOINT: "all/cleanup.retire_source@applied"},
    )
    assert killed.code == -signal.SIGKILL
    assert state(module) == ["terraform_data.target"]
    status = json.loads(cutover("status", "-p", plan, "--json", env=env).stdout)
    assert status["interrupted"] == ["all/cleanup.retire_source"]
    retired = cutover("cleanup", "-p", plan, "--retire-source", "--yes", env=env)
    assert retired.code == 0, retired.stdout + retired.stderr
    assert "adopted all/cleanup.retire_source" in " ".join(retired.stdout.split())
    assert state(module) == ["terraform_data.target"]
    shown_all = [shown.stdout, shown.stderr, prepared.stdout, switched.stdout, retired.stdout]
    assert not [t for t in [*shown_all, module.vars_path.read_text()] if secret in t]


def test_with_cloud_sql_in_the_plan_the_source_is_backed_up_before_it_is_retired(
    module: Terraform,
) -> None:
    """The final backup goes through the Cloud SQL Admin API (the stand-in), then the
    protection is lifted and the source alone destroyed; a dry run sends nothing."""
    module.write_vars({"cutover_move": MOVE}, dry_run=False)
    module.converge(dry_run=False)
    standin = Standin(polls_to_done=0, backend=InMemoryJobs())
    standin.add_instance(PROJECT, "shop-db")
    with standin.serve() as endpoint:
        plan = parse(
            {
                "move": MOVE,
                "engine": "dms",
                "source": {"host": "10.0.0.5", "user": "postgres"},
                "target": {"host": "10.0.0.6", "user": "postgres"},
                "databases": ["app"],
                "dms": dms_settings(endpoint, source="shop-db", target="shop-db-16"),
                "terraform": {
                    "directory": str(module.directory),
                    "source_address": "terraform_data.source",
                },
            }
        )
        assert plan.terraform is not None
        retire = terraforming.retire_phase(
            terraforming.Module(plan, plan.terraform, replica_target=True)
        )
        assert [s.name for s in retire.steps] == [
            "back_up_source",
            "lift_deletion_protection",
            "retire_source",
        ]
        dry = [c.action for s in retire.steps for c in s.apply(dry_run=True)]
        assert dry[0].startswith(
            "sqladmin: POST /v1/projects/shop-prod/instances/shop-db/backupRuns"
        )
        assert standin.backups == {}
        for step in retire.steps:
            step.apply(dry_run=False)
    (run,) = standin.backups.values()
    assert run["instance"] == "shop-db" and run["status"] == "SUCCESSFUL"
    assert MOVE in run["description"]
    assert state(module) == ["terraform_data.target"]
    assert inputs(module)["target"] == {"backups": True, "point_in_time_recovery": True}
