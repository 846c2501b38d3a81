"""Backups of the move's Cloud SQL instances (a plan with a dms section), each a step.

1. prepare.back_up_source: an on-demand backup of the source instance, taken
   and waited for before anything of prepare changes the source (its flags,
   its restart, a key backfilled). A run killed meanwhile finds the backup by
   its description, which names the move, and waits for that one: never two.
2. switch.enable_target_backups, without a `terraform` section (with one,
   Terraform's step of that name does it): automated backups and point-in-time
   recovery turned on for the new primary, right after the promotion, by a
   read-merge-write of settings.backupConfiguration (DMS suspends them on its
   replica; the other fields are kept as read).
3. switch.back_up_target: an on-demand backup of the new primary, asked for
   once the writers are back (a large instance takes long: nobody waits for it
   in the pause), and switch.wait_for_target_backup, the switch's last step,
   waits for it, bounded. A backup that fails or outlasts its bound is a
   warning (exit 3), not a rollback: the data is on the target.
"""

import functools
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from cutover.cloud.resources import BackupStatus
from cutover.errors import CutoverError, TargetBackupFailed
from cutover.ledger import move_id
from cutover.phases.terraform import BACKUP_SECONDS
from cutover.plan import Dms, Plan
from cutover.steps import Change, Phase, Step
from cutover.steps import SwitchStep as S

if TYPE_CHECKING:  # the Google client is loaded only by a plan that has Cloud SQL in it
    from cutover.cloud.sqladmin import SqlAdmin

log = logging.getLogger(__name__)

BACK_UP_SOURCE = "back_up_source"
SWITCH_SECONDS = 300.0  # the backup settings' patch: quick, the writers are stopped


class Backups:
    """The backups of one move's Cloud SQL instances (its plan's dms section)."""

    def __init__(self, plan: Plan, settings: Dms, *, backup_timeout: float) -> None:
        self.plan = plan
        self.settings = settings
        self.backup_timeout = backup_timeout
        # The move's identity too: a later move of the same name finds no backup of this one.
        move = f"cutover {plan.move} ({move_id(plan)})"
        self.source_description = f"{move}: the source before prepare changes it"
        self.target_description = f"{move}: the new primary after the switch"

    @functools.cached_property
    def sql(self) -> "SqlAdmin":
        """Cloud SQL Admin, its client built at first use (only a plan with Cloud SQL loads it)."""
        from cutover.cloud.client import Clients
        from cutover.cloud.sqladmin import SqlAdmin

        return SqlAdmin(Clients.from_plan(self.settings), project=self.settings.project)

    # -- prepare

    def source_backed_up(self) -> bool:
        """The source's backup of this move is taken."""
        return self.sql.backup_taken(
            self.settings.source_instance, description=self.source_description
        )

    def back_up_source(self, *, dry_run: bool) -> Sequence[Change]:
        """Take the source's backup (or find the one a killed run asked for) and wait for it."""
        return self.sql.back_up(
            self.settings.source_instance,
            description=self.source_description,
            timeout=self.backup_timeout,
            dry_run=dry_run,
        )

    # -- switch

    def target_backups_enabled(self) -> bool:
        """The new primary has automated backups and point-in-time recovery on."""
        instance = self.sql.instance(self.settings.target_instance)
        return instance is not None and instance.backup.on

    def enable_target_backups(self, *, dry_run: bool) -> Sequence[Change]:
        """Backups and point-in-time recovery on, the rest of backupConfiguration as read."""
        name = self.settings.target_instance
        instance = self.sql.existing(name, key="dms.target_instance")
        patch = self.sql.patch_backups(instance)
        if patch is None:
            return []
        return self.sql.clients.run(
            patch,
            timeout=SWITCH_SECONDS,
            what=f"turning on backups and point-in-time recovery of {name}",
            dry_run=dry_run,
        )

    def target_backup_started(self) -> bool:
        """The new primary's backup of this move is under way or taken."""
        return self.sql.backup_started(
            self.settings.target_instance, description=self.target_description
        )

    def back_up_target(self, *, dry_run: bool) -> Sequence[Change]:
        """Ask for the new primary's backup; wait_for_target_backup waits for it."""
        return self.sql.start_backup(
            self.settings.target_instance, description=self.target_description, dry_run=dry_run
        )

    def target_backed_up(self) -> bool:
        """The new primary's backup of this move is taken."""
        return self.sql.backup_taken(
            self.settings.target_instance, description=self.target_description
        )

    def wait_for_target_backup(self, *, dry_run: bool) -> Sequence[Change]:
        """Wait for the new primary's backup; one that fails or takes too long is a warning."""
        name = self.settings.target_instance
        said = Change(
            "gcp/sqladmin", f"wait for the backup of {name} ({self.target_description!r})"
        )
        if dry_run:
            return [said]
        try:
            run = self.sql.wait_for_backup(
                name, description=self.target_description, timeout=self.backup_timeout
            )
        except CutoverError as exc:  # not finished in time, or not found
            raise TargetBackupFailed(
                f"the switch is done and the data is on the target, but its backup did not "
                f"finish: {exc.message}",
                hint="look at the instance's backups in the console; run the switch again to "
                "wait for it again",
            ) from None
        if run.status is not BackupStatus.SUCCESSFUL:
            raise TargetBackupFailed(
                f"the switch is done and the data is on the target, but the backup of {name} "
                f"(backup run {run.id}) ended {run.status}: {run.error or 'no reason given'}",
                hint="the writers write on the target and nothing was rolled back; fix the "
                "cause, then run the switch again, which takes the backup anew",
            )
        return [Change("gcp/sqladmin", f"backup run {run.id} of {name}: {run.status}")]


def backups_for(plan: Plan, *, backup_timeout: float = BACKUP_SECONDS) -> Backups | None:
    """The backups of a plan whose instances are Cloud SQL's (a dms section), else None."""
    if plan.dms is None:
        return None
    return Backups(plan, plan.dms, backup_timeout=backup_timeout)


def prepare_phase(backups: Backups) -> Phase:
    """prepare's first step: the source backed up before anything changes it."""
    return Phase(
        "prepare",
        (Step(BACK_UP_SOURCE, backups.back_up_source, backups.source_backed_up, attempts=1),),
    )


def enable_target_backups_step(backups: Backups) -> Step:
    """The switch's step after the promotion (without Terraform): backups and PITR on."""
    return Step(
        S.ENABLE_TARGET_BACKUPS, backups.enable_target_backups, backups.target_backups_enabled
    )


def target_backup_steps(backups: Backups) -> tuple[Step, Step]:
    """The switch's backup of the new primary: asked for after the writers, waited for last."""
    return (
        Step(S.BACK_UP_TARGET, backups.back_up_target, backups.target_backup_started, attempts=1),
        Step(
            S.WAIT_FOR_TARGET_BACKUP,
            backups.wait_for_target_backup,
            backups.target_backed_up,
            attempts=1,
        ),
    )
