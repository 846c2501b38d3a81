"""The move's changes to its Cloud SQL instances, made through their Terraform.

With a `terraform` section in the plan, three moments of the move go through
the root module it names, each a step of the runner (recorded in the ledger
under the scope `all`, resumed, shown by `--dry-run`):

1. prepare.terraform_source_flags: the source's database flags with the two
   that turn on logical decoding; planned, shown, applied only with `--yes`.
2. switch.enable_target_backups: backups and point-in-time recovery on the
   new primary, once the writers write there again (never in the pause).
3. cleanup.back_up_source, cleanup.lift_deletion_protection,
   cleanup.retire_source (`cleanup --retire-source`): a final backup, the
   source's deletion protection lifted by an apply, then the destroy of the
   source's address alone.

Each step writes every variable the move has set so far (a later step never
undoes an earlier one) and applies only the saved plan it showed; a plan that
would destroy or replace anything it was not asked to is refused before
anything is applied. A step is done when the variables file holds its values
and a plan made now changes nothing: a run killed after Terraform's apply is
adopted, not repeated.
"""

import functools
import logging
from collections.abc import Sequence
from typing import Any

from cutover.cloud.resources import LOGICAL_DECODING_FLAGS
from cutover.cloud.terraform import PlanSummary, Terraform, refuse_destroys
from cutover.engines.base import Engine
from cutover.errors import ApprovalNeeded, PreconditionFailed
from cutover.log import register_secret
from cutover.plan import Plan, TerraformModule, resolve_secret
from cutover.steps import Change, Phase, Step
from cutover.steps import SwitchStep as S

log = logging.getLogger(__name__)

SET_SOURCE_FLAGS = "terraform_source_flags"
BACK_UP_SOURCE = "back_up_source"
LIFT_DELETION_PROTECTION = "lift_deletion_protection"
RETIRE_SOURCE = "retire_source"
BACKUP_SECONDS = 3600.0  # an on-demand backup of a large instance


class Module:
    """The plan's Terraform root module, and the variables each moment of the move gives it."""

    def __init__(self, plan: Plan, settings: TerraformModule, *, replica_target: bool) -> None:
        self.plan = plan
        self.settings = settings
        # A target that a service holds as its replica until the promotion (DMS) may have
        # no backups of its own before it: they are turned on after the promotion.
        self.replica_target = replica_target

    @functools.cached_property
    def terraform(self) -> Terraform:
        """The runner, its secrets resolved now (at the first use, never in a file)."""
        env = {}
        for name, ref in self.settings.env.items():
            env[name] = resolve_secret(ref, where=f"terraform.env.{name}")
            register_secret(env[name])
        return Terraform(
            self.settings.directory,
            binary=self.settings.binary,
            lock_timeout=self.settings.lock_timeout,
            env=env,
        )

    def variables(self, *, promoted: bool, retiring: bool = False) -> dict[str, Any]:
        """What the variables file holds at this moment of the move."""
        values: dict[str, Any] = {
            "cutover_move": self.plan.move,
            "source_database_flags": {
                **self.settings.source_database_flags,
                **LOGICAL_DECODING_FLAGS,
            },
        }
        if promoted or self.replica_target:
            values["target_backups_enabled"] = promoted
            values["target_point_in_time_recovery"] = promoted
        if retiring:
            values["source_deletion_protection"] = False
        return values

    def converged(self, values: dict[str, Any]) -> bool:
        """The variables file holds `values` and a plan made now changes nothing."""
        return self.terraform.vars_written(values) and self.terraform.converged()

    def lines(self, planned: PlanSummary, *, flags: bool = False) -> list[Change]:
        """The plan's summary, one change a resource; with `flags`, the source's restart said."""
        changes = []
        for change in planned.changing:
            line = f"{change.kind} {change.address}"
            source = change.address == self.settings.source_address
            if flags and source and change.kind == "update":
                line += " (a change of " + " or ".join(LOGICAL_DECODING_FLAGS)
                line += " restarts the instance)"
            changes.append(Change("terraform", line))
        return changes or [Change("terraform", "no changes")]

    def refuse_source_created(self, planned: PlanSummary) -> None:
        """A plan that creates the source anew is refused: it is retired, or never imported."""
        address = self.settings.source_address
        if any(c.address == address and c.kind == "create" for c in planned.changing):
            raise PreconditionFailed(
                f"Terraform's plan would create {address}, which its state does not hold; "
                "nothing was applied",
                hint="after `cleanup --retire-source`, take the source out of the module; "
                "before, import the instance at that address (docs/terraform.md)",
            )

    def converge(
        self,
        values: dict[str, Any],
        *,
        approved: bool,
        command: str,
        dry_run: bool,
        flags: bool = False,
    ) -> Sequence[Change]:
        """Write `values`, plan, refuse an unasked destroy, show; apply only when approved.

        A dry run writes nothing and runs no Terraform: it says what would be run.
        """
        tf = self.terraform
        written = tf.write_vars(values, dry_run=dry_run)
        if dry_run:
            then = "apply the saved plan" + ("" if approved else " (with --yes)")
            return [*written, Change("terraform", f"plan -out={tf.plan_path}, then {then}")]
        planned = tf.plan()
        refuse_destroys(planned)
        self.refuse_source_created(planned)
        shown = self.lines(planned, flags=flags)
        if planned.empty:
            return [*written, *shown]
        if not approved:
            raise ApprovalNeeded(
                f"Terraform's plan in {tf.directory}, saved as {tf.plan_path.name}:\n  "
                + "\n  ".join(c.action for c in shown)
                + "\nnothing was applied",
                hint=f"read it (`terraform show {tf.plan_path.name}` there shows every "
                f"attribute), then run `{command} --yes` to apply it",
            )
        tf.apply()
        return [*written, *shown]


def module_for(plan: Plan, engine: Engine) -> Module | None:
    """The plan's Terraform root module, if it names one."""
    if plan.terraform is None:
        return None
    replica = engine.traits.target_read_only_until_promote
    return Module(plan, plan.terraform, replica_target=replica)


def prepare_phase(module: Module, *, approved: bool) -> Phase:
    """prepare's Terraform step: the source's flags, applied only when `approved` (--yes)."""
    values = module.variables(promoted=False)

    def set_flags(*, dry_run: bool) -> Sequence[Change]:
        return module.converge(
            values, approved=approved, command="cutover prepare", dry_run=dry_run, flags=True
        )

    return Phase(
        "prepare",
        (
            Step(
                SET_SOURCE_FLAGS, set_flags, functools.partial(module.converged, values), attempts=1
            ),
        ),
    )


def target_backups_step(module: Module) -> Step:
    """The switch's step after the promotion: backups and point-in-time recovery on the target.

    The switch was confirmed (or run with --yes): its plan is applied, guarded.
    """
    values = module.variables(promoted=True)

    def enable(*, dry_run: bool) -> Sequence[Change]:
        return module.converge(values, approved=True, command="cutover switch", dry_run=dry_run)

    return Step(
        S.ENABLE_TARGET_BACKUPS, enable, functools.partial(module.converged, values), attempts=1
    )


def retire_phase(module: Module) -> Phase:
    """cleanup --retire-source: a final backup, the protection lifted, the source destroyed."""
    plan = module.plan
    address = module.settings.source_address
    values = module.variables(promoted=True, retiring=True)

    def back_up(*, dry_run: bool) -> Sequence[Change]:
        if not dry_run:  # refused before the backup and the protection: nothing is done
            destroy_plan()
        if plan.dms is None:
            if not dry_run:
                log.warning("no final backup of the source: the plan has no dms section")
            return [
                Change(
                    "terraform",
                    "no final backup taken: the plan has no dms section (Cloud SQL's project "
                    "and instance); take one yourself before the source is destroyed",
                )
            ]
        # The Google client is loaded only by a plan that has Cloud SQL in it.
        from cutover.cloud.client import Clients
        from cutover.cloud.sqladmin import SqlAdmin

        sql = SqlAdmin(Clients.from_plan(plan.dms), project=plan.dms.project)
        return sql.back_up(
            plan.dms.source_instance,
            description=f"cutover {plan.move}: the source's last backup before it is destroyed",
            timeout=BACKUP_SECONDS,
            dry_run=dry_run,
        )

    def destroy_plan() -> PlanSummary:
        """The plan that destroys the source alone; refused when it destroys anything else."""
        planned = module.terraform.plan(destroy=True, targets=[address])
        try:
            refuse_destroys(planned, allowed=[address])
        except PreconditionFailed as refused:
            raise PreconditionFailed(
                refused.message,
                hint="Terraform destroys with a resource what depends on it: take those out "
                "of the module (or of its state) first, then run again",
            ) from None
        return planned

    def lift(*, dry_run: bool) -> Sequence[Change]:
        if not dry_run:  # the module may have changed since the backup
            destroy_plan()
        return module.converge(
            values, approved=True, command="cutover cleanup --retire-source", dry_run=dry_run
        )

    def retired() -> bool:
        return address not in module.terraform.addresses()

    def retire(*, dry_run: bool) -> Sequence[Change]:
        tf = module.terraform
        if dry_run:
            return [
                Change(
                    "terraform",
                    f"plan -destroy -target={address} -out={tf.plan_path}, refused if it "
                    "destroys anything else, then apply the saved plan",
                )
            ]
        planned = destroy_plan()
        if address not in planned.destroyed():
            raise PreconditionFailed(
                f"Terraform's plan to destroy {address} destroys nothing of that name",
                hint="check terraform.source_address in the plan against `terraform state list`",
            )
        tf.apply()
        return module.lines(planned)

    return Phase(
        "cleanup",
        (
            Step(BACK_UP_SOURCE, back_up, attempts=1),
            Step(
                LIFT_DELETION_PROTECTION,
                lift,
                lambda: retired() or module.converged(values),
                attempts=1,
            ),
            # Past it the source is gone: the steps before are never probed again (a plan
            # made now would create it anew from the module).
            Step(RETIRE_SOURCE, retire, retired, point_of_no_return=True, attempts=1),
        ),
    )
