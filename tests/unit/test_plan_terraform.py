"""The plan's terraform section, and the variables each moment of the move writes."""

from pathlib import Path
from typing import Any

import pytest
import yaml

from cutover.errors import PlanError
from cutover.phases.terraform import Module
from cutover.plan import load, parse

PLAN: dict[str, Any] = {
    "move": "shop_2026",
    "source": {"host": "10.0.0.5", "user": "postgres"},
    "target": {"host": "10.0.0.6", "user": "postgres"},
    "databases": ["app"],
}
ADDRESS = "module.source.google_sql_database_instance.this"


def written(tmp_path: Path, section: dict[str, Any]) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({**PLAN, "terraform": section}))
    return path


def test_a_relative_directory_is_the_plan_folders_and_must_exist(tmp_path: Path) -> None:
    (tmp_path / "infra").mkdir()
    plan = load(written(tmp_path, {"directory": "infra", "source_address": ADDRESS}))
    assert plan.terraform is not None
    assert plan.terraform.directory == tmp_path / "infra"
    assert plan.terraform.binary == "terraform" and plan.terraform.lock_timeout == 120.0

    with pytest.raises(PlanError) as missing:
        load(written(tmp_path, {"directory": "nowhere", "source_address": ADDRESS}))
    assert f"terraform.directory: {tmp_path / 'nowhere'} is not a directory" in (
        missing.value.message
    )
    with pytest.raises(PlanError) as absolute:
        parse({**PLAN, "terraform": {"directory": "/no/such", "source_address": ADDRESS}})
    assert "terraform: directory /no/such is not a directory" in absolute.value.message


@pytest.mark.parametrize(
    "address",
    ["source", "module.source", "google_sql_database_instance", "data.google_x.y", "a.b.c"],
)
def test_an_address_that_names_no_resource_is_refused(tmp_path: Path, address: str) -> None:
    with pytest.raises(PlanError) as refused:
        parse({**PLAN, "terraform": {"directory": str(tmp_path), "source_address": address}})
    assert "terraform.source_address: a resource address as `terraform state list`" in (
        refused.value.message
    )


def test_terraforms_secrets_come_by_reference_only(tmp_path: Path) -> None:
    section = {"directory": str(tmp_path), "source_address": ADDRESS}
    secret = "hunter2-literal"
    with pytest.raises(PlanError) as refused:
        parse({**PLAN, "terraform": {**section, "env": {"TF_VAR_migration_password": secret}}})
    assert "a literal secret is not allowed" in refused.value.message
    assert secret not in refused.value.message
    by_reference = {"TF_VAR_migration_password": "env:MIGRATION_PASSWORD"}
    assert parse({**PLAN, "terraform": {**section, "env": by_reference}}).terraform is not None


def test_each_moment_writes_every_variable_set_so_far(tmp_path: Path) -> None:
    section = {
        "directory": str(tmp_path),
        "source_address": ADDRESS,
        "source_database_flags": {"max_connections": "200", "cloudsql.logical_decoding": "off"},
    }
    plan = parse({**PLAN, "terraform": section})
    assert plan.terraform is not None
    flags = {
        "max_connections": "200",
        "cloudsql.logical_decoding": "on",  # the move's flags win
        "cloudsql.enable_pglogical": "on",
    }
    standalone = Module(plan, plan.terraform, replica_target=False)
    assert standalone.variables(promoted=False) == {
        "cutover_move": "shop_2026",
        "source_database_flags": flags,
    }  # a target that is no replica keeps its backups as the module has them
    replica = Module(plan, plan.terraform, replica_target=True)
    assert replica.variables(promoted=False)["target_backups_enabled"] is False
    assert replica.variables(promoted=True, retiring=True) == {
        "cutover_move": "shop_2026",
        "source_database_flags": flags,
        "target_backups_enabled": True,
        "target_point_in_time_recovery": True,
        "source_deletion_protection": False,
    }
