"""The Terraform modules declare every variable cutover writes and every output it reads."""

from pathlib import Path

import hcl2
import pytest

from cutover.cloud.terraform import OUTPUTS, VARIABLES

REPO = Path(__file__).resolve().parents[2]
ROOTS = [REPO / "terraform" / "examples" / "move", REPO / "tests" / "terraform" / "module"]


def declared(directory: Path) -> tuple[set[str], set[str]]:
    """The variables and outputs of every .tf file of a module."""
    variables: set[str] = set()
    outputs: set[str] = set()
    for path in sorted(directory.glob("*.tf")):
        with path.open() as handle:
            parsed = hcl2.load(handle)
        for block in parsed.get("variable", []):
            variables |= {name.strip('"') for name in block}
        for block in parsed.get("output", []):
            outputs |= {name.strip('"') for name in block}
    return variables, outputs


@pytest.mark.parametrize("root", ROOTS, ids=lambda p: str(p.relative_to(REPO)))
def test_a_root_module_declares_what_cutover_writes_and_reads(root: Path) -> None:
    variables, outputs = declared(root)
    assert set(VARIABLES) <= variables, sorted(set(VARIABLES) - variables)
    assert set(OUTPUTS) <= outputs, sorted(set(OUTPUTS) - outputs)


def test_the_modules_parse_and_their_callers_pass_only_declared_variables() -> None:
    for module in ("cloudsql-instance", "dms-migration"):
        variables, _ = declared(REPO / "terraform" / "modules" / module)
        with (REPO / "terraform" / "examples" / "move" / "main.tf").open() as handle:
            calls = [
                body
                for block in hcl2.load(handle)["module"]
                for body in block.values()
                if body["source"].strip('"').endswith(module)
            ]
        assert calls, module
        for call in calls:
            passed = {k for k in call if not k.startswith("__")} - {"source"}
            assert passed <= variables, (module, sorted(passed - variables))
