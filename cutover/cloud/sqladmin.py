"""Cloud SQL Admin (sqladmin v1): instances, their database flags, restarts, on-demand backups.

A flag change is a read-merge-write of the whole list, because a patch that
carries `settings.databaseFlags` replaces the list: a flag left out goes back
to its default (and may restart the instance). `patch_flags` therefore takes
the instance just read and sends nothing when every flag is already as wanted.
Cloud SQL takes no requestId: its changes are made idempotent by reading first.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from cutover import wait
from cutover.cloud.client import Call, Clients, NotFound, OperationFailed
from cutover.cloud.resources import (
    Api,
    BackupRun,
    BackupStatus,
    Instance,
    Operation,
    backup_run_from,
    flags_differ,
    instance_from,
    merge_flags,
    sql_operation_from,
)
from cutover.errors import PreconditionFailed, StepFailed
from cutover.steps import Change

T = TypeVar("T")

# A backup run that ended without a backup: another one is taken in its place.
FAILED_BACKUPS = frozenset({BackupStatus.FAILED, BackupStatus.SKIPPED})


def _backup_page(data: Mapping[str, Any]) -> tuple[list[BackupRun], str | None]:
    """One page of backupRuns.list: its runs and the next page's token."""
    items = data.get("items")
    runs = (
        [backup_run_from(i) for i in items if isinstance(i, dict)]
        if isinstance(items, list)
        else []
    )
    token = data.get("nextPageToken")
    return runs, token if isinstance(token, str) and token else None


class SqlAdmin:
    """The Cloud SQL Admin calls of one project."""

    def __init__(self, clients: Clients, *, project: str) -> None:
        self.clients = clients
        self.project = project

    def _call(self, make: Callable[[Any], Any], parse: Callable[[Mapping[str, Any]], T]) -> Call[T]:
        return self.clients.call(Api.SQLADMIN, make, parse)

    def instance(self, name: str) -> Instance | None:
        """An instance, or None when the project has none of that name."""
        call = self._call(
            lambda s: s.instances().get(project=self.project, instance=name), instance_from
        )
        try:
            return self.clients.execute(call)
        except NotFound:
            return None

    def existing(self, name: str, *, key: str) -> Instance:
        """The instance the plan names at `key`; refused, nothing changed, when it is not."""
        instance = self.instance(name)
        if instance is None:
            raise PreconditionFailed(
                f"the Cloud SQL instance {name} does not exist in project {self.project}",
                hint=f"check {key} and dms.project in the plan",
            )
        return instance

    def patch_flags(
        self, instance: Instance, wanted: Mapping[str, str | None]
    ) -> Call[Operation] | None:
        """The patch that sets `wanted` (None: remove) and keeps every other flag as read;
        None when the instance has them already."""
        if not flags_differ(instance.flags, wanted):
            return None
        flags = [f.to_json() for f in merge_flags(instance.flags, wanted)]
        body = {"settings": {"databaseFlags": flags}}
        return self._call(
            lambda s: s.instances().patch(project=self.project, instance=instance.name, body=body),
            sql_operation_from,
        )

    def patch_backups(self, instance: Instance) -> Call[Operation] | None:
        """The patch that turns on automated backups and point-in-time recovery, every other
        field of settings.backupConfiguration sent back as read; None when both are on."""
        if instance.backup.on:
            return None
        wanted = {
            **instance.backup_settings,
            "enabled": True,
            "pointInTimeRecoveryEnabled": True,
        }
        body = {"settings": {"backupConfiguration": wanted}}
        return self._call(
            lambda s: s.instances().patch(project=self.project, instance=instance.name, body=body),
            sql_operation_from,
        )

    def restart(self, name: str) -> Call[Operation]:
        """Restart an instance (flags such as cloudsql.logical_decoding need it)."""
        return self._call(
            lambda s: s.instances().restart(project=self.project, instance=name),
            sql_operation_from,
        )

    def insert_backup(self, name: str, *, description: str) -> Call[Operation]:
        """Take an on-demand backup; the operation's backup_id names the backup run."""
        body = {"description": description}
        return self._call(
            lambda s: s.backupRuns().insert(project=self.project, instance=name, body=body),
            sql_operation_from,
        )

    def back_up(
        self, name: str, *, description: str, timeout: float, dry_run: bool
    ) -> Sequence[Change]:
        """An on-demand backup of an instance, waited for until it is taken.

        Idempotent by its description: a run that died after asking for it finds
        the backup under way (or taken) and waits for that one instead of taking
        a second; only a backup that failed is taken anew.
        """
        changes = self.start_backup(name, description=description, dry_run=dry_run)
        if not dry_run:
            run = self.wait_for_backup(name, description=description, timeout=timeout)
            if run.status is not BackupStatus.SUCCESSFUL:
                raise OperationFailed(
                    f"the backup of {name} (backup run {run.id}) ended {run.status}: "
                    f"{run.error or 'no reason given'}",
                    hint="the message is Google's; fix its cause and run the command again, "
                    "which takes the backup anew",
                )
        return changes

    def start_backup(self, name: str, *, description: str, dry_run: bool) -> Sequence[Change]:
        """Ask for an on-demand backup, unless one of this description is under way or taken.

        Only the insert's answer is awaited, not the backup (wait_for_backup).
        """
        call = self.insert_backup(name, description=description)
        run = self.described_backup(name, description=description)
        if run is not None and run.status not in FAILED_BACKUPS:
            said = (
                f"backup run {run.id} of {name} ({description!r}) asked for already: {run.status}"
            )
            return [Change(f"gcp/{Api.SQLADMIN.value}", said)]
        if not dry_run:
            self.clients.execute(call)
        return [call.change()]

    def backup_runs(self, name: str) -> list[BackupRun]:
        """Every backup run of an instance, newest first (as backupRuns.list answers)."""
        runs: list[BackupRun] = []
        token: str | None = None
        while True:
            page, token = self.clients.execute(self._backup_page_call(name, token))
            runs += page
            if not token:
                return runs

    def _backup_page_call(
        self, name: str, token: str | None
    ) -> Call[tuple[list[BackupRun], str | None]]:
        return self._call(
            lambda s: s.backupRuns().list(project=self.project, instance=name, pageToken=token),
            _backup_page,
        )

    def described_backup(self, name: str, *, description: str) -> BackupRun | None:
        """The newest backup run of an instance with exactly this description, or None."""
        return next((r for r in self.backup_runs(name) if r.description == description), None)

    def backup_started(self, name: str, *, description: str) -> bool:
        """A backup of this description is under way or taken (one that failed is not)."""
        run = self.described_backup(name, description=description)
        return run is not None and run.status not in FAILED_BACKUPS

    def backup_taken(self, name: str, *, description: str) -> bool:
        """The newest backup of this description is taken."""
        run = self.described_backup(name, description=description)
        return run is not None and run.status is BackupStatus.SUCCESSFUL

    def wait_for_backup(
        self, name: str, *, description: str, timeout: float | wait.Deadline
    ) -> BackupRun:
        """Read the newest backup run of this description, less and less often, until it
        ended (successful or not); StepFailed when there is none or time is up."""
        polling = self.clients.polling
        seen: list[BackupRun] = []

        def ended() -> BackupRun | None:
            run = self.described_backup(name, description=description)
            if run is None:
                raise StepFailed(
                    f"no backup of {name} described {description!r} was found",
                    hint="it was deleted, or never asked for: run the command again",
                )
            seen[:] = [run]
            return run if run.finished else None

        return wait.until(
            ended,
            timeout=timeout,
            what=lambda: (
                f"the backup of {name}"
                + (f" (backup run {seen[0].id}, {seen[0].status})" if seen else "")
                + " did not finish"
            ),
            hint="it may still finish: run the command again, which waits for it anew",
            clock=self.clients.clock,
            sleep=self.clients.sleep,
            interval=polling.interval,
            backoff=polling.backoff,
            max_interval=polling.max_interval,
        )

    def backup_run(self, name: str, backup_id: str) -> BackupRun | None:
        """One backup run of an instance, or None when there is none of that ID."""
        call = self._call(
            lambda s: s.backupRuns().get(project=self.project, instance=name, id=backup_id),
            backup_run_from,
        )
        try:
            return self.clients.execute(call)
        except NotFound:
            return None

    def operation(self, name: str) -> Operation:
        """An operation of this project, read again."""
        return self.clients.execute(
            self.clients.operation(Operation(Api.SQLADMIN, name, done=False, project=self.project))
        )
