"""Google Database Migration Service (datamigration v1): connection profiles and migration jobs.

Reads are sent at once and return typed values (None for what does not
exist). What changes the world is returned as a `Call` for `Clients.run`,
which sends it and waits for its operation, or only renders it in a dry run.
Creates and deletes carry a requestId (`client.request_id`), so a run that
died after sending one sends the same again and DMS makes nothing twice.
verify, start, promote and demoteDestination take none: the engine reads the
job's state first and calls them only when the job needs them. The request
bodies are built here too, from the plan's dms section.
"""

from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from cutover.cloud.client import Call, Clients, NotFound
from cutover.cloud.resources import (
    Api,
    ConnectionProfile,
    MigrationJob,
    MigrationJobObject,
    Operation,
    dms_operation_from,
    job_from,
    job_object_from,
    profile_from,
)
from cutover.plan import Connectivity, Dms, NewCloudSqlInstance

Body = dict[str, Any]
T = TypeVar("T")

_POSTGRES_ON_CLOUD_SQL = {"engine": "POSTGRESQL", "provider": "CLOUDSQL"}


def source_profile_body(
    *, instance: str, host: str, port: int, username: str, password: str
) -> Body:
    """A source profile: a Cloud SQL for PostgreSQL instance, reached as `username`."""
    return {
        "displayName": instance,
        "provider": "CLOUDSQL",
        "role": "SOURCE",
        "postgresql": {
            "host": host,
            "port": port,
            "username": username,
            "password": password,
            "cloudSqlId": instance,
        },
    }


def existing_destination_profile_body(*, instance: str) -> Body:
    """A destination profile for an instance that exists: DMS demotes it to a replica."""
    return {
        "displayName": instance,
        "provider": "CLOUDSQL",
        "role": "DESTINATION",
        "postgresql": {"cloudSqlId": instance},
    }


def new_destination_profile_body(
    *,
    settings: NewCloudSqlInstance,
    source_profile: str,
    root_password: str | None,
    network: str | None,
    labels: Mapping[str, str] | None = None,
) -> Body:
    """A destination profile whose instance DMS creates (its ID is the profile's)."""
    cloud_sql: Body = {
        # databaseVersion is deprecated (its enum ends at POSTGRES_16): the name replaces it.
        "databaseVersionName": settings.database_version,
        "tier": settings.tier,
        "availabilityType": settings.availability_type,
        "dataDiskType": settings.data_disk_type,
        "databaseFlags": dict(settings.database_flags),
        "sourceId": source_profile,
        "userLabels": dict(labels or {}),
    }
    if settings.edition is not None:
        cloud_sql["edition"] = settings.edition
    if settings.zone is not None:
        cloud_sql["zone"] = settings.zone
    if settings.data_disk_size_gb is not None:
        cloud_sql["dataDiskSizeGb"] = str(settings.data_disk_size_gb)
    if root_password is not None:
        cloud_sql["rootPassword"] = root_password
    if network is not None:
        cloud_sql["ipConfig"] = {"privateNetwork": network, "enableIpv4": False}
    return {"provider": "CLOUDSQL", "role": "DESTINATION", "cloudsql": {"settings": cloud_sql}}


def job_body(
    *,
    source_profile: str,
    destination_profile: str,
    connectivity: Connectivity,
    network: str | None,
    display_name: str,
    labels: Mapping[str, str] | None = None,
    databases: Sequence[str] | None = None,
) -> Body:
    """A continuous migration job between two profiles (their full names); with
    `databases`, only those (else every database of the source)."""
    body: Body = {
        "displayName": display_name,
        "type": "CONTINUOUS",
        "source": source_profile,
        "destination": destination_profile,
        "sourceDatabase": dict(_POSTGRES_ON_CLOUD_SQL),
        "destinationDatabase": dict(_POSTGRES_ON_CLOUD_SQL),
        "labels": dict(labels or {}),
    }
    if databases is not None:
        body["objectsConfig"] = {
            "sourceObjectsConfig": {
                "objectsSelectionType": "SPECIFIED_OBJECTS",
                "objectConfigs": [
                    {"objectIdentifier": {"database": db, "type": "DATABASE"}} for db in databases
                ],
            }
        }
    if connectivity is Connectivity.VPC_PEERING:
        body["vpcPeeringConnectivity"] = {"vpc": network}
    else:
        body["staticIpConnectivity"] = {}
    return body


class DataMigration:
    """The DMS calls of one project and region."""

    def __init__(self, clients: Clients, *, project: str, region: str) -> None:
        self.clients = clients
        self.parent = f"projects/{project}/locations/{region}"

    @classmethod
    def for_plan(cls, clients: Clients, dms: Dms) -> "DataMigration":
        """DMS in the plan's project and region."""
        return cls(clients, project=dms.project, region=dms.region)

    def profile_name(self, profile_id: str) -> str:
        """The full name of a connection profile of this region."""
        return f"{self.parent}/connectionProfiles/{profile_id}"

    def job_name(self, job_id: str) -> str:
        """The full name of a migration job of this region."""
        return f"{self.parent}/migrationJobs/{job_id}"

    def _profiles(self, service: Any) -> Any:
        return service.projects().locations().connectionProfiles()

    def _jobs(self, service: Any) -> Any:
        return service.projects().locations().migrationJobs()

    def _call(self, make: Callable[[Any], Any], parse: Callable[[Mapping[str, Any]], T]) -> Call[T]:
        return self.clients.call(Api.DATAMIGRATION, make, parse)

    def _objects_page(self, name: str, token: str | None) -> Callable[[Any], Any]:
        def make(service: Any) -> Any:
            return self._jobs(service).objects().list(parent=name, pageToken=token)

        return make

    # -- reads

    def profile(self, profile_id: str) -> ConnectionProfile | None:
        """A connection profile, or None when there is none of that ID."""
        name = self.profile_name(profile_id)
        call = self._call(lambda s: self._profiles(s).get(name=name), profile_from)
        try:
            return self.clients.execute(call)
        except NotFound:
            return None

    def job(self, job_id: str) -> MigrationJob | None:
        """A migration job, or None when there is none of that ID."""
        name = self.job_name(job_id)
        call = self._call(lambda s: self._jobs(s).get(name=name), job_from)
        try:
            return self.clients.execute(call)
        except NotFound:
            return None

    def job_objects(self, job_id: str) -> list[MigrationJobObject]:
        """Every object (database) of a job and where it stands, over all pages."""
        name = self.job_name(job_id)
        found: list[MigrationJobObject] = []
        token: str | None = None
        while True:
            page = self.clients.execute(self._call(self._objects_page(name, token), dict))
            found.extend(job_object_from(o) for o in page.get("migrationJobObjects", []))
            token = page.get("nextPageToken") or None
            if token is None:
                return found

    def operation(self, name: str) -> Operation:
        """An operation, read again (after a crash: the one a create left running)."""
        return self.clients.execute(
            self.clients.operation(Operation(Api.DATAMIGRATION, name, done=False))
        )

    # -- changes: each a Call for Clients.run

    def create_profile(self, profile_id: str, body: Body, *, request_id: str) -> Call[Operation]:
        """Create a connection profile."""
        return self._call(
            lambda s: self._profiles(s).create(
                parent=self.parent, connectionProfileId=profile_id, requestId=request_id, body=body
            ),
            dms_operation_from,
        )

    def delete_profile(
        self, profile_id: str, *, request_id: str, force: bool = False
    ) -> Call[Operation]:
        """Delete a connection profile (one no active job uses)."""
        name = self.profile_name(profile_id)
        return self._call(
            lambda s: self._profiles(s).delete(
                name=name, requestId=request_id, force=force or None
            ),
            dms_operation_from,
        )

    def create_job(self, job_id: str, body: Body, *, request_id: str) -> Call[Operation]:
        """Create a migration job (NOT_STARTED once its operation is done)."""
        return self._call(
            lambda s: self._jobs(s).create(
                parent=self.parent, migrationJobId=job_id, requestId=request_id, body=body
            ),
            dms_operation_from,
        )

    def delete_job(self, job_id: str, *, request_id: str, force: bool = False) -> Call[Operation]:
        """Delete a migration job. `force` deletes the destination's replica database too:
        never after a promote."""
        name = self.job_name(job_id)
        return self._call(
            lambda s: self._jobs(s).delete(name=name, requestId=request_id, force=force or None),
            dms_operation_from,
        )

    def verify_job(self, job_id: str) -> Call[Operation]:
        """Check that the destination reaches the source and that the source is ready."""
        name = self.job_name(job_id)
        return self._call(lambda s: self._jobs(s).verify(name=name, body={}), dms_operation_from)

    def start_job(self, job_id: str, *, skip_validation: bool = False) -> Call[Operation]:
        """Start a job: the full dump, then CDC."""
        name = self.job_name(job_id)
        body = {"skipValidation": True} if skip_validation else {}
        return self._call(lambda s: self._jobs(s).start(name=name, body=body), dms_operation_from)

    def promote_job(self, job_id: str) -> Call[Operation]:
        """End replication: the destination stands alone (the job is COMPLETED)."""
        name = self.job_name(job_id)
        return self._call(lambda s: self._jobs(s).promote(name=name, body={}), dms_operation_from)

    def demote_destination(self, job_id: str) -> Call[Operation]:
        """Make an existing destination instance a replica of the source, before start."""
        name = self.job_name(job_id)
        return self._call(
            lambda s: self._jobs(s).demoteDestination(name=name, body={}), dms_operation_from
        )

    def stop_job(self, job_id: str) -> Call[Operation]:
        """Stop a running job (resume works only for one stopped during CDC)."""
        name = self.job_name(job_id)
        return self._call(lambda s: self._jobs(s).stop(name=name, body={}), dms_operation_from)
