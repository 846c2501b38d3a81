"""The dms engine's conversation with Google's APIs, against the in-memory stand-in.

The subject is the choreography: what is created once, what is sent only when
the job needs it, what a rerun after a crash sends, how busy and refusing
answers end, what cleanup deletes, and that a dry run sends nothing. The
stand-in's jobs are in memory (no rows move); the source and target are the
lab's real servers, for what the engine reads there (table sizes, ownership).
"""

import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
import yaml

from cutover import database, state
from cutover.cloud.client import ApiUnavailable, Clients, Polling, RetryPolicy
from cutover.cloud.datamigration import DataMigration
from cutover.cloud.monitoring import DMS_LAG_BYTES, DMS_LAG_SECONDS, DMS_RESOURCE
from cutover.database import Pool
from cutover.engines import dms
from cutover.engines.base import Engine
from cutover.errors import StepFailed
from cutover.lab import Lab
from cutover.plan import Plan, dump, parse, resolve_secret
from cutover.steps import Change
from cutover.types import SyncProgress, TableState
from tests.conftest import Databases, connect
from tests.gcp.standin import (
    PROJECT,
    REGION,
    InMemoryJobs,
    Request,
    Sleeps,
    Standin,
    dms_settings,
)

pytestmark = pytest.mark.integration

ATTEMPTS = 4
SCHEMA = """
CREATE TABLE items (id bigserial PRIMARY KEY, note text);
INSERT INTO items (note) SELECT 'n' || g FROM generate_series(1, 500) g;
"""


@dataclass
class World:
    lab: Lab
    db: str
    plan: Plan
    standin: Standin
    backend: InMemoryJobs
    clients: Clients
    sleeps: Sleeps
    servers: Pool
    engine: Engine

    @property
    def calls(self) -> list[Request]:
        """What was sent that is not a read."""
        return [r for r in self.standin.requests if r.method != "GET"]

    def sent(self, method: str, path: str) -> list[Request]:
        return self.standin.requests_to(method, path)

    def start(self) -> list[Change]:
        seen: list[SyncProgress] = []
        changes = self.engine.initial_sync(
            self.db,
            jobs=1,
            deadline=time.monotonic() + 60,
            on_progress=seen.append,
            dry_run=False,
        )
        assert seen and seen[-1].done
        return list(changes)

    def fresh_engine(self) -> Engine:
        """The engine a new run of the command builds: it knows only what it reads."""
        return dms.build(self.plan, self.servers, clients=self.clients)


@contextmanager
def made_world(lab: Lab, databases: Databases, count: int = 1) -> Iterator[World]:
    """A move of `count` databases (the first is the world's) through the stand-in."""
    names = [databases.create() for _ in range(count)]
    for db in names:
        with connect(lab.server("source"), db) as conn:
            conn.execute(SCHEMA)
            conn.execute("CREATE SCHEMA _cutover")
            conn.execute(
                "CREATE TABLE _cutover.barrier (token text PRIMARY KEY, move text NOT NULL, "
                "created_at timestamptz NOT NULL DEFAULT clock_timestamp())"
            )
        # What DMS's dump would have made on the destination.
        with connect(lab.server("target")) as conn:
            conn.execute(psycopg.sql.SQL("CREATE DATABASE {}").format(psycopg.sql.Identifier(db)))
        with connect(lab.server("target"), db) as conn:
            conn.execute(SCHEMA)
            conn.execute("CREATE SCHEMA _cutover")
    backend = InMemoryJobs(dump_reads=2)
    standin = Standin(polls_to_done=2, backend=backend)
    standin.databases = names
    standin.add_instance(PROJECT, "shop-db")
    standin.add_instance(PROJECT, "shop-db-16")
    with standin.serve() as endpoint:
        data = yaml.safe_load(dump(lab.plan(names, move=f"d{uuid.uuid4().hex[:8]}")))
        data["engine"] = "dms"
        data["dms"] = dms_settings(endpoint, source="shop-db", target="shop-db-16")
        plan = parse(data)
        assert plan.dms is not None
        sleeps = Sleeps()
        clients = Clients.from_plan(
            plan.dms,
            retry=RetryPolicy(attempts=ATTEMPTS, initial=0.01, maximum=0.05),
            polling=Polling(interval=0.01, backoff=2.0, max_interval=0.04),
            sleep=sleeps,
        )
        with database.pool({"source": plan.source, "target": plan.target}) as servers:
            engine = dms.build(plan, servers, clients=clients)
            yield World(lab, names[0], plan, standin, backend, clients, sleeps, servers, engine)


@pytest.fixture
def world(lab: Lab, databases: Databases) -> Iterator[World]:
    with made_world(lab, databases) as made:
        yield made


def by_hand(world: World) -> DataMigration:
    """The DMS calls, for a test to send what a run that died had sent."""
    assert world.plan.dms is not None
    return DataMigration.for_plan(world.clients, world.plan.dms)


def test_start_makes_profiles_and_job_once_and_calls_each_step_once_in_order(
    world: World,
) -> None:
    engine, db = world.engine, world.db
    assert not engine.initial_sync_started(db)
    assert engine.progress(db).by_state == {TableState.QUEUED: 2}  # items and the barrier
    world.start()
    assert engine.initial_sync_started(db) and engine.streaming(db)
    progress = engine.progress(db)
    assert progress.done and progress.bytes_done == progress.bytes_total > 0

    again = world.fresh_engine()  # start run a second time: everything reads as done
    assert again.initial_sync_started(db)
    world.start()
    verbs = [(r.method, r.path.rsplit("/", 1)[-1]) for r in world.calls]
    profiles = f"projects/{PROJECT}/locations/{REGION}/connectionProfiles"
    job = dms.resource_id(world.plan.move)
    assert verbs == [
        ("POST", "connectionProfiles"),
        ("POST", "connectionProfiles"),
        ("POST", "migrationJobs"),
        ("POST", f"{job}:verify"),
        ("POST", f"{job}:demoteDestination"),
        ("POST", f"{job}:start"),
    ]
    creates = world.calls[:3]
    assert all(r.query.get("requestId") for r in creates)
    assert len({r.query["requestId"] for r in creates}) == 3
    source, destination = world.calls[0].body, world.calls[1].body
    assert source is not None and destination is not None
    assert source["postgresql"]["username"] == world.plan.source.user
    assert destination["postgresql"] == {"cloudSqlId": "shop-db-16"}
    assert world.calls[2].body == {
        **(world.calls[2].body or {}),
        "type": "CONTINUOUS",
        "source": f"{profiles}/{dms.resource_id(world.plan.move, 'source')}",
        "destination": f"{profiles}/{dms.resource_id(world.plan.move, 'destination')}",
    }
    assert [e for e, _ in world.backend.events] == ["created", "verify", "started"]
    instance = world.standin.instances[(PROJECT, "shop-db-16")]
    assert instance["instanceType"] == "READ_REPLICA_INSTANCE"


def test_a_rerun_after_a_crash_sends_a_create_again_with_its_request_id_and_nothing_twice(
    world: World,
) -> None:
    # The first run dies after sending the source profile's create: every read of its
    # operation fails until the retries are spent, as if the controller were killed there.
    world.standin.fail(503, times=ATTEMPTS, method="GET", path=r"/operations/")
    with pytest.raises(ApiUnavailable):
        world.start()
    sent = world.sent("POST", r"/connectionProfiles$")
    assert len(sent) == 1
    assert len(world.standin.profiles) == 1  # made, not yet recorded by anyone

    world.start()  # the same command again: it adopts what the first run sent
    sources = [
        r
        for r in world.sent("POST", r"/connectionProfiles$")
        if r.query["connectionProfileId"].endswith("-source")
    ]
    assert len(sources) == 2 and sources[0].query["requestId"] == sources[1].query["requestId"]
    assert len(world.standin.profiles) == 2 and len(world.standin.jobs) == 1
    for action in ("verify", "demoteDestination", "start"):
        assert len(world.sent("POST", rf":{action}$")) == 1, action
    assert [e for e, _ in world.backend.events] == ["created", "verify", "started"]


def test_a_job_started_by_a_run_that_died_is_not_started_again(world: World) -> None:
    # The first run is refused at start (400), and the call it would have made is then
    # sent by hand: the job is started, and no run of cutover recorded it.
    world.standin.fail(400, method="POST", path=r":start$", code="FAILED_PRECONDITION")
    with pytest.raises(StepFailed) as refused:
        world.start()
    assert "DMS refused starting the migration job" in refused.value.message
    assert "FAILED_PRECONDITION" in refused.value.message
    assert "NOT_STARTED" in refused.value.hint and "cutover status" in refused.value.hint
    calls = by_hand(world)
    world.standin.polls_to_done = 0  # its operation ends in DMS while nobody watches
    world.clients.execute(calls.start_job(dms.resource_id(world.plan.move)))
    assert len(world.sent("POST", r":start$")) == 2  # refused once, then sent by hand

    world.start()
    assert len(world.sent("POST", r":start$")) == 2  # not a third time
    assert len(world.sent("POST", r":verify$")) == 1
    assert len(world.sent("POST", r":demoteDestination$")) == 1
    assert world.engine.streaming(world.db)


def test_busy_answers_are_retried_within_the_bound(world: World) -> None:
    world.standin.fail(503, times=2, method="POST", path=r"/migrationJobs$")
    world.standin.fail(429, times=2, method="POST", path=r":start$")
    world.start()
    assert len(world.sent("POST", r"/migrationJobs$")) == 3
    assert len(world.sent("POST", r":start$")) == 3
    assert len(world.standin.jobs) == 1
    assert [e for e, _ in world.backend.events] == ["created", "verify", "started"]
    assert len([s for s in world.sleeps.asked if s > 0]) >= 4

    # Past the bound, the run stops with an error the runner tries again later.
    world.standin.fail(503, times=ATTEMPTS, method="GET", path=r"/migrationJobs/[^/]+$")
    with pytest.raises(ApiUnavailable) as busy:
        world.fresh_engine().streaming(world.db)
    assert f"still after {ATTEMPTS} attempts" in busy.value.message


def give_items_to_dms(world: World, owner: str) -> None:
    """The source's items belong to `owner`; the target's, as DMS leaves them, to its role."""
    ident = psycopg.sql.Identifier
    for side in ("source", "target"):
        with connect(world.lab.server(side)) as conn:
            for role in (owner, "cloudsqlexternalsync"):
                exists = conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,))
                if exists.fetchone() is None:
                    conn.execute(psycopg.sql.SQL("CREATE ROLE {}").format(ident(role)))
    with connect(world.lab.server("source"), world.db) as conn:
        conn.execute(psycopg.sql.SQL("ALTER TABLE items OWNER TO {}").format(ident(owner)))
        conn.execute("GRANT SELECT, INSERT ON items TO PUBLIC")  # DMS carries no grant
    with connect(world.lab.server("target"), world.db) as conn:
        for kind in ("TABLE items", "SCHEMA _cutover"):
            conn.execute(
                psycopg.sql.SQL("ALTER {} OWNER TO cloudsqlexternalsync").format(
                    psycopg.sql.SQL(kind)
                )
            )


def owner_on_target(world: World, query: str) -> str:
    with connect(world.lab.server("target"), world.db) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return str(row["owner"])


def test_promote_once_owners_given_back_and_cleanup_deletes_without_force(
    world: World,
) -> None:
    engine, db = world.engine, world.db
    owner = f'app owner "{uuid.uuid4().hex[:6]}"'
    give_items_to_dms(world, owner)
    world.start()
    assert not engine.promoted(db)

    # A run that died right after sending promote: the job is COMPLETED, nobody recorded it.
    world.standin.polls_to_done = 0
    world.clients.execute(by_hand(world).promote_job(dms.resource_id(world.plan.move)))
    assert not engine.promoted(db)  # the owners are not given back yet
    changes = engine.promote(db, dry_run=False)
    assert len(world.sent("POST", r":promote$")) == 1  # not sent again
    assert engine.promoted(db)
    assert (
        owner_on_target(
            world, "SELECT tableowner AS owner FROM pg_tables WHERE tablename = 'items'"
        )
        == owner
    )
    # The source's _cutover belongs to the controller's user: so does the target's now.
    assert (
        owner_on_target(
            world,
            "SELECT nspowner::regrole::text AS owner FROM pg_namespace WHERE nspname = '_cutover'",
        )
        == world.plan.source.user
    )
    assert any("ALTER TABLE" in c.action and "OWNER TO" in c.action for c in changes)
    with connect(world.lab.server("target"), db) as conn:
        granted = conn.execute(
            "SELECT has_table_privilege('public', 'items', 'INSERT') AS ok"
        ).fetchone()
    assert granted == {"ok": True}

    # The switch's release_source, after the writers: the job deleted, never with force.
    assert engine.stopped(db) and not engine.source_released(db)
    engine.stop(db, dry_run=False)
    engine.release_source(db, dry_run=False)
    deletes = world.sent("DELETE", r"/migrationJobs/")
    assert len(deletes) == 1 and "force" not in deletes[0].query
    assert deletes[0].query.get("requestId")
    assert engine.source_released(db) and engine.promoted(db)  # the mark outlives the job

    # cleanup: the source profile (the destination's went with the job)
    assert not engine.source_unprepared(db)
    engine.unprepare_source(db, dry_run=False)
    assert engine.source_unprepared(db) and world.standin.profiles == {}
    assert len(world.sent("DELETE", r"/connectionProfiles/")) == 1


def test_dry_run_lists_every_call_with_secrets_masked_and_sends_none(world: World) -> None:
    changes = world.engine.initial_sync(
        world.db,
        jobs=1,
        deadline=time.monotonic() + 60,
        on_progress=lambda _: None,
        dry_run=True,
    )
    assert world.calls == []  # reads only
    shown = [c.action for c in changes]
    job = dms.resource_id(world.plan.move)
    expected = [
        "POST /v1/projects/shop-prod/locations/europe-west1/connectionProfiles?",
        "POST /v1/projects/shop-prod/locations/europe-west1/connectionProfiles?",
        "POST /v1/projects/shop-prod/locations/europe-west1/migrationJobs?",
        f"POST /v1/projects/shop-prod/locations/europe-west1/migrationJobs/{job}:verify",
        f"POST /v1/projects/shop-prod/locations/europe-west1/migrationJobs/{job}:demoteDestination",
        f"POST /v1/projects/shop-prod/locations/europe-west1/migrationJobs/{job}:start",
    ]
    assert len(shown) == len(expected)
    for line, start in zip(shown, expected, strict=True):
        assert line.startswith("datamigration: " + start), line
    assert all(c.where == "gcp/datamigration" for c in changes)
    assert "requestId=" in shown[0] and '"password":"********"' in shown[0].replace(" ", "")
    reference = world.plan.source.password
    assert reference is not None
    password = resolve_secret(reference, where="source.password")
    assert not any(password in line for line in shown)


def test_monitoring_s_lag_is_shown_with_the_age_of_its_sample_and_decides_nothing(
    world: World,
) -> None:
    world.start()
    job = dms.resource_id(world.plan.move)
    now = datetime.now(UTC)
    for metric, values in ((DMS_LAG_SECONDS, (40, 3)), (DMS_LAG_BYTES, (900_000, 4_096))):
        world.standin.add_points(
            metric,
            [(now - timedelta(seconds=200), values[0]), (now - timedelta(seconds=140), values[1])],
            resource=DMS_RESOURCE,
            resource_labels={"migration_job_id": job},
            metric_labels={"database": world.db},
        )
    # Another database's series of the same job is not this one's.
    world.standin.add_points(
        DMS_LAG_SECONDS,
        [(now - timedelta(seconds=60), 999)],
        resource=DMS_RESOURCE,
        resource_labels={"migration_job_id": job},
        metric_labels={"database": "other"},
    )
    engine = world.engine
    assert isinstance(engine, dms.DmsEngine)
    sample = engine.monitored_lag(world.db, now=now)
    assert sample is not None
    assert (sample.seconds, sample.bytes) == (3, 4_096)
    assert sample.age(now.timestamp()) == pytest.approx(140, abs=1)
    said = engine.describe(world.db)
    assert said is not None and "RUNNING/CDC" in said
    assert "monitored lag 3 s, 4096 B (14" in said and "s old)" in said
    # The exact lag is the source's slots', and there is none: no figure is made up.
    assert engine.lag(world.db) is None


def test_status_of_several_databases_reads_the_job_and_monitoring_once(
    lab: Lab, databases: Databases
) -> None:
    """One job serves every database of the move: status (and each scrape of the exporter)
    reads it, its objects and each Monitoring metric once, not once per fact and database
    (1,200 databases made 8,400 job reads and 4,800 Monitoring queries of one status)."""
    with made_world(lab, databases, count=3) as world:
        world.start()
        world.standin.requests.clear()
        moved = state.read(world.plan, world.servers, None)
        job = dms.resource_id(world.plan.move)
        assert len(world.sent("GET", rf"/migrationJobs/{job}$")) == 1
        assert len(world.sent("GET", rf"/migrationJobs/{job}/objects$")) == 1
        assert len(world.sent("GET", r"/timeSeries$")) == 2  # lag in seconds, lag in bytes
        assert moved.problems == ()
        for db in world.plan.databases:
            facts = moved.databases[db].replication
            assert facts.service is not None and facts.service.phase == "CDC", db
            assert facts.progress is not None and facts.progress.done, db
            assert facts.description is not None and "RUNNING/CDC" in facts.description, db
        # Outside a reading, every question is asked anew: the switch decides on fresh reads.
        world.standin.requests.clear()
        world.engine.streaming(world.db)
        world.engine.streaming(world.db)
        assert len(world.sent("GET", rf"/migrationJobs/{job}$")) == 2
