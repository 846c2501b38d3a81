"""The Terraform runner: the move's variables written, a plan read before it is applied.

Teams that keep their Cloud SQL instances in Terraform want the move's changes
(the flags that turn on logical decoding, point-in-time recovery on the new
primary, the old instance's removal) made through their Terraform, not behind
its back. cutover writes only `cutover.auto.tfvars.json` in the module's
directory; every change goes through `terraform plan -out`, whose saved plan is
read back with `terraform show -json` and summarised (what is created, updated,
replaced, destroyed) before `terraform apply` of exactly that saved plan. A
guard refuses a plan that would destroy or replace anything it was not asked
to, and then nothing is applied.

A run killed in the middle leaves Terraform's state as Terraform left it: the
same command run again plans from that state (waiting for the lock of a
Terraform that still runs) and applies what is left, which is nothing when the
apply had finished.
"""

import json
import os
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cutover import process
from cutover.errors import PreconditionFailed, StepFailed
from cutover.steps import Change

VARS_FILE = "cutover.auto.tfvars.json"
# What cutover writes to a root module and reads from it (terraform/examples/move declares them).
VARIABLES = (
    "cutover_move",
    "source_database_flags",
    "source_deletion_protection",
    "target_backups_enabled",
    "target_point_in_time_recovery",
)
OUTPUTS = ("source_instance", "target_instance", "migration_job")
PLAN_FILE = "cutover.tfplan"
TIMEOUT_SECONDS = 3600.0  # an instance's creation or restart can take many minutes
LOCK_TIMEOUT = 120.0  # seconds: a Terraform left running by a killed controller holds the lock
HINT = "the output above is Terraform's; fix the module or its state, then run the command again"


@dataclass(frozen=True)
class ResourceChange:
    """One resource of a saved plan and what the plan does to it."""

    address: str
    actions: tuple[str, ...]  # Terraform's: ("create",), ("update",), ("delete", "create"), ...
    reason: str = ""  # Terraform's action_reason, e.g. replace_because_tainted

    @property
    def kind(self) -> str:
        """create, update, replace, delete, read or no-op."""
        if "delete" in self.actions and "create" in self.actions:
            return "replace"
        return self.actions[0] if len(self.actions) == 1 else "+".join(self.actions)

    @property
    def destroys(self) -> bool:
        """The resource as it is now is gone after the apply (deleted or replaced)."""
        return "delete" in self.actions


@dataclass(frozen=True)
class PlanSummary:
    """What a saved plan changes, read from `terraform show -json`."""

    changes: tuple[ResourceChange, ...]

    @property
    def empty(self) -> bool:
        """The plan changes nothing."""
        return not self.changing

    @property
    def changing(self) -> tuple[ResourceChange, ...]:
        """The resources the plan changes (no-ops and reads left out)."""
        return tuple(c for c in self.changes if c.kind not in ("no-op", "read"))

    def lines(self) -> list[str]:
        """One line per changed resource: `replace google_sql_database_instance.source`."""
        return [f"{c.kind} {c.address}" for c in self.changing] or ["no changes"]

    def destroyed(self) -> list[str]:
        """The addresses the plan deletes or replaces."""
        return [c.address for c in self.changing if c.destroys]


def summary(shown: Any) -> PlanSummary:
    """A PlanSummary of `terraform show -json` of a saved plan (format 1.x).

    StepFailed when the JSON is not shaped like a plan: nothing is applied on a guess.
    """
    entries = shown.get("resource_changes") if isinstance(shown, dict) else None
    if not isinstance(entries, list | None):
        entries = [entries]
    changes = []
    for entry in entries or ():
        change = entry.get("change") if isinstance(entry, dict) else None
        actions = change.get("actions") if isinstance(change, dict) else None
        if not isinstance(actions, list) or not actions:
            raise StepFailed(
                f"terraform show -json gave a resource change of no known shape: {entry!r:.80}",
                hint="this Terraform's plan format is not one cutover reads (1.x)",
            )
        address, reason = str(entry.get("address", "?")), str(entry.get("action_reason") or "")
        changes.append(ResourceChange(address, tuple(map(str, actions)), reason))
    return PlanSummary(tuple(changes))


def state_addresses(shown: Any) -> Iterator[str]:
    """The resource addresses of `terraform show -json` of a state, child modules included."""
    values = shown.get("values") if isinstance(shown, dict) else None
    modules = [values.get("root_module")] if isinstance(values, dict) else []
    while modules:
        module = modules.pop()
        if not isinstance(module, dict):
            continue
        for resource in module.get("resources") or ():
            if isinstance(resource, dict) and resource.get("mode") == "managed":
                yield str(resource.get("address"))
        modules += module.get("child_modules") or ()


def refuse_destroys(plan: PlanSummary, *, allowed: Iterable[str] = ()) -> None:
    """PreconditionFailed when the plan deletes or replaces an address not in `allowed`."""
    allowed = set(allowed)
    extra = [c for c in plan.changing if c.destroys and c.address not in allowed]
    if extra:
        tainted = [c.address for c in extra if c.reason == "replace_because_tainted"]
        raise PreconditionFailed(
            "the Terraform plan would destroy or replace "
            + ", ".join(c.address for c in extra)
            + (f" (only {', '.join(sorted(allowed))} may go)" if allowed else "")
            + "; nothing was applied",
            hint=(
                f"{', '.join(tainted)} is tainted: an apply that made it was interrupted; if it "
                "is whole, `terraform untaint` it, then run again"
                if tainted
                else "a change of the module or its variables forces it: look at `terraform "
                "plan` in that directory, fix the cause (or add lifecycle ignore_changes), "
                "then run again"
            ),
        )


class Terraform:
    """One Terraform root module: its variables, plans and applies."""

    def __init__(
        self,
        directory: Path,
        *,
        binary: str = "terraform",
        lock_timeout: float = LOCK_TIMEOUT,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.binary = binary
        self.lock_timeout = lock_timeout
        self.env = dict(env or {})  # secrets (TF_VAR_...): given to Terraform, never written

    @property
    def vars_path(self) -> Path:
        """The variables file cutover writes (and only that one)."""
        return self.directory / VARS_FILE

    @property
    def plan_path(self) -> Path:
        """Where the saved plan of the last `plan` is kept until it is applied."""
        return self.directory / PLAN_FILE

    def vars_written(self, values: Mapping[str, Any]) -> bool:
        """The variables file holds exactly these values."""
        try:
            return bool(json.loads(self.vars_path.read_text()) == dict(values))
        except (OSError, ValueError):
            return False

    def write_vars(self, values: Mapping[str, Any], *, dry_run: bool) -> list[Change]:
        """Write the move's variables, atomically (a reader sees the old file or the new)."""
        text = json.dumps(dict(values), indent=2, sort_keys=True) + "\n"
        if not dry_run:
            with tempfile.NamedTemporaryFile(
                "w", dir=self.directory, prefix=".cutover-", suffix=".json", delete=False
            ) as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(handle.name, self.vars_path)
        return [Change("terraform", f"write {self.vars_path}: {', '.join(sorted(values))}")]

    def init(self) -> None:
        """`terraform init`: providers and modules the directory needs (idempotent)."""
        self._run("init", "-input=false", "-no-color", what="terraform init")

    def plan(self, *, destroy: bool = False, targets: Iterable[str] = ()) -> PlanSummary:
        """`terraform plan -out`, read back: what applying the saved plan would change."""
        argv = ["plan", "-input=false", "-no-color", self._lock_timeout]
        argv += ["-destroy"] if destroy else []
        argv += [f"-target={t}" for t in targets]
        self._run(*argv, f"-out={self.plan_path}", what="terraform plan")
        shown = self._run("show", "-json", "-no-color", str(self.plan_path), what="terraform show")
        try:
            return summary(json.loads(shown))
        except ValueError as exc:
            raise StepFailed(
                f"terraform show -json printed no JSON: {exc}", hint="check the Terraform version"
            ) from None

    def apply(self) -> None:
        """`terraform apply` of the saved plan, exactly: nothing the plan did not show."""
        if not self.plan_path.exists():
            raise StepFailed(
                f"no saved plan at {self.plan_path} to apply",
                hint="run the command again: it plans first",
            )
        self._run(
            "apply",
            "-input=false",
            "-no-color",
            self._lock_timeout,
            str(self.plan_path),
            what="terraform apply",
        )
        self.plan_path.unlink(missing_ok=True)

    def addresses(self) -> list[str]:
        """The resources in the state, as `terraform state list` names them.

        Read from `terraform show -json` (an empty state is no error there); the
        values it holds, secrets among them, are never kept or shown.
        """
        shown = self._run("show", "-json", "-no-color", what="terraform show")
        try:
            return sorted(state_addresses(json.loads(shown)))
        except ValueError as exc:
            raise StepFailed(
                f"terraform show -json printed no JSON: {exc}", hint="check the Terraform version"
            ) from None

    def converged(self, *, destroy: bool = False, targets: Iterable[str] = ()) -> bool:
        """A plan made now would change nothing."""
        return self.plan(destroy=destroy, targets=targets).empty

    def converge(
        self,
        *,
        allowed_destroys: Iterable[str] = (),
        destroy: bool = False,
        targets: Iterable[str] = (),
        dry_run: bool,
    ) -> list[Change]:
        """Plan, refuse an unasked destroy or replace, then apply the saved plan.

        A dry run plans (Terraform changes nothing by planning) and shows the plan.
        """
        planned = self.plan(destroy=destroy, targets=targets)
        refuse_destroys(planned, allowed=allowed_destroys)
        if not dry_run and not planned.empty:
            self.apply()
        return [Change("terraform", line) for line in planned.lines()]

    @property
    def _lock_timeout(self) -> str:
        return f"-lock-timeout={self.lock_timeout:.0f}s"

    def _run(self, *argv: str, what: str) -> str:
        result = process.run(
            [self.binary, f"-chdir={self.directory}", *argv],
            timeout=TIMEOUT_SECONDS,
            env={**os.environ, **self.env, "TF_IN_AUTOMATION": "1"},
            what=what,
            hint=HINT,
        )
        if result.returncode != 0:
            raise StepFailed(f"{what} failed: {process.tail(result)}", hint=HINT)
        return result.stdout
