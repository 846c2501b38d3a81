"""cutover.cloud through the real google-api-python-client, against the stand-in server.

No PostgreSQL here: the subject is the HTTP conversation with Google's APIs,
which the stand-in in tests/gcp speaks in the discovery documents' shapes.
"""

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest

from cutover.cloud.client import (
    AlreadyExists,
    ApiError,
    ApiUnavailable,
    Clients,
    NotFound,
    OperationFailed,
    Polling,
    RetryPolicy,
    credentials_for,
    request_id,
)
from cutover.cloud.datamigration import (
    DataMigration,
    existing_destination_profile_body,
    job_body,
    new_destination_profile_body,
    source_profile_body,
)
from cutover.cloud.monitoring import DMS_LAG_SECONDS, DMS_RESOURCE, Monitoring
from cutover.cloud.resources import Api, InstanceState, JobPhase, JobState, ProfileState
from cutover.cloud.sqladmin import SqlAdmin
from cutover.errors import Retryable
from cutover.plan import Connectivity, NewCloudSqlInstance, parse
from tests.gcp.standin import PROJECT, REGION, InMemoryJobs, Sleeps, Standin, dms_settings

MOVE = "shop_2026"
ATTEMPTS = 4


@dataclass
class World:
    standin: Standin
    clients: Clients
    sleeps: Sleeps
    dms: DataMigration
    sql: SqlAdmin
    monitoring: Monitoring


@pytest.fixture
def world() -> Iterator[World]:
    standin = Standin(polls_to_done=2, backend=InMemoryJobs(dump_reads=2))
    standin.add_instance(PROJECT, "shop-db", flags={"max_connections": "200"})
    standin.add_instance(
        PROJECT, "shop-db-16", flags={"max_connections": "200", "work_mem": "4096"}
    )
    with standin.serve() as endpoint:
        plan = parse(
            {
                "move": MOVE,
                "engine": "dms",
                "source": {"host": "10.0.0.5", "user": "postgres"},
                "target": {"host": "10.0.0.6", "user": "postgres"},
                "databases": ["app"],
                "dms": dms_settings(endpoint, source="shop-db", target="shop-db-16"),
            }
        )
        assert plan.dms is not None
        sleeps = Sleeps()
        clients = Clients.from_plan(
            plan.dms,
            retry=RetryPolicy(attempts=ATTEMPTS, initial=0.01, maximum=0.05),
            polling=Polling(interval=0.01, backoff=2.0, max_interval=0.04),
            sleep=sleeps,
        )
        yield World(
            standin,
            clients,
            sleeps,
            DataMigration.for_plan(clients, plan.dms),
            SqlAdmin(clients, project=PROJECT),
            Monitoring(clients, project=PROJECT),
        )


def make_profiles(world: World) -> tuple[str, str]:
    source = source_profile_body(
        instance="shop-db", host="10.0.0.5", port=5432, username="postgres", password="pw-abc"
    )
    destination = existing_destination_profile_body(instance="shop-db-16")
    for profile_id, body in (("src", source), ("dst", destination)):
        call = world.dms.create_profile(
            profile_id, body, request_id=request_id(MOVE, f"profile.{profile_id}")
        )
        world.clients.run(call, timeout=5, what=f"creating profile {profile_id}", dry_run=False)
    return world.dms.profile_name("src"), world.dms.profile_name("dst")


def make_job(world: World, job_id: str = "job") -> None:
    source, destination = make_profiles(world)
    body = job_body(
        source_profile=source,
        destination_profile=destination,
        connectivity=Connectivity.STATIC_IP,
        network=None,
        display_name="cutover shop_2026",
    )
    call = world.dms.create_job(job_id, body, request_id=request_id(MOVE, "start.create_job"))
    world.clients.run(call, timeout=5, what="creating the migration job", dry_run=False)


def test_a_job_goes_from_create_to_promote_and_delete(world: World) -> None:
    make_job(world)
    profile = world.dms.profile("src")
    assert profile is not None and profile.state is ProfileState.READY
    assert profile.cloud_sql_id == "shop-db"
    job = world.dms.job("job")
    assert job is not None
    assert (job.state, job.phase) == (JobState.NOT_STARTED, JobPhase.PHASE_UNSPECIFIED)
    assert job.source == world.dms.profile_name("src")

    run = world.clients.run
    run(world.dms.demote_destination("job"), timeout=5, what="demote", dry_run=False)
    target = world.sql.instance("shop-db-16")
    assert target is not None and target.instance_type == "READ_REPLICA_INSTANCE"
    run(world.dms.verify_job("job"), timeout=5, what="verify", dry_run=False)
    run(world.dms.start_job("job"), timeout=5, what="start", dry_run=False)

    phases = [world.dms.job("job") for _ in range(3)]
    assert [(j.state, j.phase) for j in phases if j] == [
        (JobState.RUNNING, JobPhase.FULL_DUMP),
        (JobState.RUNNING, JobPhase.FULL_DUMP),
        (JobState.RUNNING, JobPhase.CDC),
    ]
    assert phases[-1] is not None and phases[-1].is_promotable

    run(world.dms.promote_job("job"), timeout=5, what="promote", dry_run=False)
    done = world.dms.job("job")
    assert done is not None and done.state is JobState.COMPLETED and not done.is_promotable
    target = world.sql.instance("shop-db-16")
    assert target is not None and target.instance_type == "CLOUD_SQL_INSTANCE"

    delete = world.dms.delete_job("job", request_id=request_id(MOVE, "cleanup.delete_job"))
    run(delete, timeout=5, what="delete", dry_run=False)
    assert world.dms.job("job") is None
    assert world.dms.profile("dst") is None  # deleted with the job, as DMS does
    assert world.standin.requests_to("DELETE", "migrationJobs/job$")[0].query == {
        "requestId": request_id(MOVE, "cleanup.delete_job"),
        "alt": "json",
    }


def test_an_operation_is_polled_with_backoff_until_done(world: World) -> None:
    world.standin.polls_to_done = 6
    make_profiles(world)
    polls = world.standin.requests_to("GET", "/operations/")
    assert len(polls) == 2 * 6  # two profiles, each done at its sixth read
    waits = world.sleeps.asked[:5]
    assert waits == pytest.approx([0.01, 0.02, 0.04, 0.04, 0.04])  # doubling up to the ceiling


def test_an_operation_that_takes_too_long_fails_with_its_name(world: World) -> None:
    world.standin.polls_to_done = 10_000
    call = world.dms.create_profile(
        "src", existing_destination_profile_body(instance="x"), request_id="r1"
    )
    with pytest.raises(Exception) as caught:
        world.clients.run(call, timeout=0.05, what="creating profile src", dry_run=False)
    assert "creating profile src did not finish (operation projects/shop-prod/" in str(caught.value)
    assert "run the command again" in getattr(caught.value, "hint", "")


def test_an_operation_that_failed_raises_google_s_message(world: World) -> None:
    assert isinstance(world.standin.backend, InMemoryJobs)
    world.standin.backend.verify_error = "the source is not reachable on 10.0.0.5:5432"
    make_job(world)
    with pytest.raises(OperationFailed) as caught:
        world.clients.run(world.dms.verify_job("job"), timeout=5, what="verify", dry_run=False)
    assert caught.value.message.startswith(
        "verify failed: FAILED_PRECONDITION: the source is not reachable on 10.0.0.5:5432"
    )


def test_busy_answers_are_tried_again_until_one_succeeds(world: World) -> None:
    make_job(world)
    world.standin.fail(429, times=1, method="GET", path="migrationJobs/job$")
    world.standin.fail(503, times=1, method="GET", path="migrationJobs/job$")
    before = len(world.standin.requests_to("GET", "migrationJobs/job$"))
    job = world.dms.job("job")
    assert job is not None and job.state is JobState.NOT_STARTED
    assert len(world.standin.requests_to("GET", "migrationJobs/job$")) - before == 3


def test_cloud_sql_s_another_operation_in_progress_is_tried_again(world: World) -> None:
    instance = world.sql.instance("shop-db")
    assert instance is not None
    world.standin.fail(409, times=2, method="PATCH", path="instances/shop-db$")
    call = world.sql.patch_flags(instance, {"cloudsql.logical_decoding": "on"})
    assert call is not None
    world.clients.run(call, timeout=5, what="setting flags", dry_run=False)
    assert len(world.standin.requests_to("PATCH", "instances/shop-db$")) == 3
    patched = world.sql.instance("shop-db")
    assert patched is not None and ("cloudsql.logical_decoding", "on") in [
        (f.name, f.value) for f in patched.flags
    ]


def test_retries_are_bounded_then_a_clear_error(world: World) -> None:
    world.standin.fail(503, times=100, path="migrationJobs/job$")
    with pytest.raises(ApiUnavailable) as caught:
        world.dms.job("job")
    assert len(world.standin.requests_to("GET", "migrationJobs/job$")) == ATTEMPTS
    error = caught.value
    assert isinstance(error, Retryable)
    assert re.match(
        r"datamigration GET /v1/projects/shop-prod/locations/europe-west1/migrationJobs/job: "
        r"HTTP 503 UNAVAILABLE: injected 503 \(still after 4 attempts\)$",
        error.message,
    )
    assert "run the command again" in error.hint
    pauses = world.sleeps.asked
    assert len(pauses) == ATTEMPTS - 1 and all(0 < p <= 0.05 for p in pauses)


def test_a_client_error_is_not_tried_again_and_has_a_hint(world: World) -> None:
    world.standin.fail(403, times=1, path="migrationJobs/job$")
    with pytest.raises(ApiError) as caught:
        world.dms.job("job")
    assert len(world.standin.requests_to("GET", "migrationJobs/job$")) == 1
    assert caught.value.status == 403 and caught.value.code == "PERMISSION_DENIED"
    assert "roles/datamigration.admin" in caught.value.hint


def test_a_call_the_job_s_state_refuses_is_a_precondition_error(world: World) -> None:
    make_job(world)
    with pytest.raises(ApiError) as caught:
        world.clients.run(world.dms.promote_job("job"), timeout=5, what="promote", dry_run=False)
    assert caught.value.code == "FAILED_PRECONDITION"
    assert "in state NOT_STARTED" in caught.value.message
    assert "`cutover status` shows where it stands" in caught.value.hint
    assert len(world.standin.requests_to("POST", ":promote$")) == 1


def test_what_does_not_exist_reads_as_none_or_not_found(world: World) -> None:
    assert world.dms.job("nope") is None
    assert world.dms.profile("nope") is None
    assert world.sql.instance("nope") is None
    assert world.sql.backup_run("shop-db", "123") is None
    with pytest.raises(NotFound) as caught:
        world.dms.operation(f"projects/{PROJECT}/locations/{REGION}/operations/nope")
    assert "check dms.project, dms.region" in caught.value.hint


def test_a_create_sent_again_with_its_request_id_makes_nothing_twice(world: World) -> None:
    source, destination = make_profiles(world)
    body = job_body(
        source_profile=source,
        destination_profile=destination,
        connectivity=Connectivity.VPC_PEERING,
        network="projects/shop-prod/global/networks/default",
        display_name="cutover",
    )
    rid = request_id(MOVE, "start.create_job")
    # A run that died right after sending the create, and the run after it.
    first = world.clients.execute(world.dms.create_job("job", body, request_id=rid))
    again = world.clients.execute(world.dms.create_job("job", body, request_id=rid))
    assert again.name == first.name
    world.clients.wait_for(again, timeout=5, what="creating the job")
    assert isinstance(world.standin.backend, InMemoryJobs)
    assert [e for e in world.standin.backend.events if e[0] == "created"] == [
        ("created", world.dms.job_name("job"))
    ]
    assert len(world.standin.jobs) == 1
    job = world.standin.jobs[world.dms.job_name("job")]
    assert job["vpcPeeringConnectivity"] == {"vpc": "projects/shop-prod/global/networks/default"}

    other = world.dms.create_job("job", body, request_id=request_id(MOVE, "x", generation=1))
    with pytest.raises(AlreadyExists) as caught:
        world.clients.execute(other)
    assert len(world.standin.requests_to("POST", "/migrationJobs$")) == 3  # never retried
    assert "exists, not made by this move's earlier runs" in caught.value.hint


def test_a_delete_sent_again_after_it_finished_answers_its_operation(world: World) -> None:
    make_job(world)
    rid = request_id(MOVE, "cleanup.delete_job")
    world.clients.run(
        world.dms.delete_job("job", request_id=rid), timeout=5, what="delete", dry_run=False
    )
    again = world.clients.execute(world.dms.delete_job("job", request_id=rid))
    assert again.done and again.error is None


def test_flags_are_read_merged_and_written_whole(world: World) -> None:
    instance = world.sql.instance("shop-db-16")
    assert instance is not None and instance.state is InstanceState.RUNNABLE
    wanted: dict[str, str | None] = {
        "cloudsql.logical_decoding": "on",
        "cloudsql.enable_pglogical": "on",
        "work_mem": None,
    }
    call = world.sql.patch_flags(instance, wanted)
    assert call is not None
    world.clients.run(call, timeout=5, what="flags", dry_run=False)
    after = world.sql.instance("shop-db-16")
    assert after is not None
    assert {f.name: f.value for f in after.flags} == {
        "max_connections": "200",  # kept: the patch carried it, since a patch replaces the list
        "cloudsql.logical_decoding": "on",
        "cloudsql.enable_pglogical": "on",
    }
    sent = world.standin.requests_to("PATCH", "instances/shop-db-16$")[0].body
    assert sent == {
        "settings": {
            "databaseFlags": [
                {"name": "max_connections", "value": "200"},
                {"name": "cloudsql.logical_decoding", "value": "on"},
                {"name": "cloudsql.enable_pglogical", "value": "on"},
            ]
        }
    }
    assert world.sql.patch_flags(after, wanted) is None  # nothing left to change: no call


def test_restart_and_an_on_demand_backup(world: World) -> None:
    world.clients.run(world.sql.restart("shop-db"), timeout=5, what="restart", dry_run=False)
    assert world.standin.restarts == {"shop-db": 1}
    started = world.clients.execute(world.sql.insert_backup("shop-db", description="cutover"))
    assert started.backup_id is not None and started.project == PROJECT
    running = world.sql.backup_run("shop-db", started.backup_id)
    assert running is not None and not running.finished
    world.clients.wait_for(started, timeout=5, what="backup")
    backup = world.sql.backup_run("shop-db", started.backup_id)
    assert backup is not None and backup.finished and backup.status.value == "SUCCESSFUL"
    assert world.sql.operation(started.name).done


def test_a_dry_run_renders_each_call_without_its_secrets_and_sends_nothing(
    world: World,
) -> None:
    password, root = "pw-Zq8x-source", "pw-Ry4k-root"
    source = source_profile_body(
        instance="shop-db", host="10.0.0.5", port=5432, username="postgres", password=password
    )
    destination = new_destination_profile_body(
        settings=NewCloudSqlInstance(database_version="POSTGRES_16", tier="db-custom-2-7680"),
        source_profile=world.dms.profile_name("src"),
        root_password=root,
        network=None,
    )
    changes = [
        *world.clients.run(
            world.dms.create_profile("src", source, request_id="r-src"),
            timeout=5,
            what="x",
            dry_run=True,
        ),
        *world.clients.run(
            world.dms.create_profile("dst", destination, request_id="r-dst"),
            timeout=5,
            what="x",
            dry_run=True,
        ),
        *world.clients.run(world.dms.start_job("job"), timeout=5, what="x", dry_run=True),
    ]
    assert world.standin.requests == []
    lines = [c.action for c in changes]
    assert all(password not in line and root not in line for line in lines)
    assert lines[0] == (
        "datamigration: POST /v1/projects/shop-prod/locations/europe-west1/connectionProfiles"
        "?connectionProfileId=src&requestId=r-src "
        '{"displayName":"shop-db","provider":"CLOUDSQL","role":"SOURCE","postgresql":'
        '{"host":"10.0.0.5","port":5432,"username":"postgres","password":"********",'
        '"cloudSqlId":"shop-db"}}'
    )
    assert '"rootPassword":"********"' in lines[1]
    assert '"databaseVersionName":"POSTGRES_16"' in lines[1]
    assert lines[2] == (
        "datamigration: POST "
        "/v1/projects/shop-prod/locations/europe-west1/migrationJobs/job:start {}"
    )
    assert {c.where for c in changes} == {"gcp/datamigration"}


def test_lag_points_of_one_job_newest_first_over_pages(world: World) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    minutes = [now - timedelta(minutes=m) for m in (3, 2, 1)]
    for database, values in (("app", [40.0, 7.0, 0.0]), ("billing", [5.0, 1.0, 0.0])):
        world.standin.add_points(
            DMS_LAG_SECONDS,
            list(zip(minutes, values, strict=True)),
            resource=DMS_RESOURCE,
            resource_labels={"migration_job_id": "job"},
            metric_labels={"database": database},
        )
    world.standin.add_points(  # another job's: never in the answer
        DMS_LAG_SECONDS,
        [(minutes[-1], 999.0)],
        resource=DMS_RESOURCE,
        resource_labels={"migration_job_id": "other"},
    )
    world.standin.series_page_size = 1
    found = world.monitoring.series(
        DMS_LAG_SECONDS,
        start=now - timedelta(minutes=10),
        end=now,
        resource=DMS_RESOURCE,
        labels={"migration_job_id": "job"},
    )
    assert [s.metric_labels["database"] for s in found] == ["app", "billing"]
    assert [p.value for p in found[0].points] == [0.0, 7.0, 40.0]
    assert [p.end_time for p in found[0].points] == list(reversed(minutes))
    query = world.standin.requests_to("GET", "/timeSeries$")[0].query
    assert query["filter"] == (
        'metric.type = "datamigration.googleapis.com/migration_job/max_replica_sec_lag" AND '
        'resource.type = "datamigration.googleapis.com/MigrationJob" AND '
        'resource.labels.migration_job_id = "job"'
    )
    assert query["aggregation.perSeriesAligner"] == "ALIGN_MAX" and query["view"] == "FULL"


def test_a_job_s_objects_over_pages(world: World) -> None:
    make_job(world)
    world.standin.databases = ["app", "billing", "audit"]
    world.standin.objects_page_size = 2
    objects = world.dms.job_objects("job")
    assert [o.database for o in objects] == ["app", "billing", "audit"]
    assert len(world.standin.requests_to("GET", "/objects$")) == 2


def test_an_api_that_cannot_be_reached_is_tried_again_then_unavailable() -> None:
    with Standin().serve() as endpoint:
        pass  # served and closed: nothing listens on its port any more
    sleeps = Sleeps()
    clients = Clients(
        credentials=credentials_for("anonymous"),
        endpoints={Api.DATAMIGRATION: endpoint},
        retry=RetryPolicy(attempts=3, initial=0.01, maximum=0.02),
        sleep=sleeps,
    )
    with pytest.raises(ApiUnavailable) as caught:
        DataMigration(clients, project=PROJECT, region=REGION).job("job")
    assert len(sleeps.asked) == 2
    assert caught.value.message.startswith(
        "datamigration GET /v1/projects/shop-prod/locations/europe-west1/migrationJobs/job: "
        "ConnectionRefusedError"
    )
    assert "check the network path to the API" in caught.value.hint
