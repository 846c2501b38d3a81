"""Cloud SQL Admin (sqladmin v1): instances, their database flags, restarts, on-demand backups.

A flag change is a read-merge-write of the whole list, because a patch that
carries `settings.databaseFlags` replaces the list: a flag left out goes back
to its default (and may restart the instance). `patch_flags` therefore takes
the instance just read and sends nothing when every flag is already as wanted.
Cloud SQL takes no requestId: its changes are made idempotent by reading first.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from cutover.cloud.client import Call, Clients, NotFound
from cutover.cloud.resources import (
    Api,
    BackupRun,
    Instance,
    Operation,
    backup_run_from,
    flags_differ,
    instance_from,
    merge_flags,
    sql_operation_from,
)
from cutover.steps import Change

T = TypeVar("T")


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
        """An on-demand backup of an instance, waited for until it is taken."""
        return self.clients.run(
            self.insert_backup(name, description=description),
            timeout=timeout,
            what=f"the backup of {name}",
            dry_run=dry_run,
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
