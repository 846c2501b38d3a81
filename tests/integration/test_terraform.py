"""The Terraform runner with the real binary, on a module of Terraform's own resources."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cutover.cloud.terraform import VARS_FILE, Terraform, refuse_destroys
from cutover.errors import PreconditionFailed
from tests.conftest import REPO

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(shutil.which("terraform") is None, reason="no terraform binary here"),
]

MODULE = Path(__file__).resolve().parents[1] / "terraform" / "module"
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
