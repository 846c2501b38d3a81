"""The stand-in backed by the lab: DMS jobs, Cloud SQL instances and lag on real PostgreSQL.

cutover.cloud talks through the real google-api-python-client to the stand-in
(tests/gcp/standin.py), whose jobs are pglogical replication between the lab's
two servers and whose instances are those servers (tests/gcp/backend.py).
"""

import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from cutover.cloud.client import Clients, OperationFailed, Polling, RetryPolicy
from cutover.cloud.datamigration import (
    DataMigration,
    existing_destination_profile_body,
    job_body,
    source_profile_body,
)
from cutover.cloud.monitoring import (
    CLOUDSQL_LAG_BYTES,
    CLOUDSQL_RESOURCE,
    DMS_LAG_BYTES,
    DMS_LAG_SECONDS,
    DMS_RESOURCE,
    Monitoring,
)
from cutover.cloud.resources import JobPhase, JobState
from cutover.cloud.sqladmin import SqlAdmin
from cutover.lab import Lab
from cutover.pg import tools
from cutover.plan import Connectivity, parse
from tests.conftest import Databases, connect
from tests.gcp.backend import (
    ENABLE_PGLOGICAL,
    LOGICAL_DECODING,
    OWNER,
    PglogicalJobs,
    lab_standin,
)
from tests.gcp.standin import PROJECT, Standin, dms_settings

SOURCE, TARGET = "shop-db", "shop-db-16"
DELAY = 1.5  # seconds a lag point stays invisible (Cloud Monitoring: 1-3 minutes)
PERIOD = 0.2  # seconds between two lag samples (Cloud Monitoring: 60)

SCHEMA = """
CREATE SCHEMA sales;
CREATE TABLE items (id serial PRIMARY KEY, name text NOT NULL);
CREATE TABLE sales.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, amount int);
CREATE VIEW big_orders AS SELECT * FROM sales.orders WHERE amount > 100;
INSERT INTO items (name) SELECT 'item ' || g FROM generate_series(1, 500) g;
INSERT INTO sales.orders (amount) SELECT g FROM generate_series(1, 300) g;
"""


@dataclass
class World:
    lab: Lab
    standin: Standin
    backend: PglogicalJobs
    clients: Clients
    dms: DataMigration
    sql: SqlAdmin
    monitoring: Monitoring

    def run(self, call: Any, what: str) -> None:
        self.clients.run(call, timeout=60, what=what, dry_run=False)


@pytest.fixture
def world(lab: Lab, databases: Databases, tmp_path: Path) -> Iterator[World]:
    with (
        lab_standin(
            lab,
            project=PROJECT,
            instances={SOURCE: "source", TARGET: "target"},
            backup_dir=tmp_path / "backups",
            delay=DELAY,
            period=PERIOD,
            flags={SOURCE: {LOGICAL_DECODING: "on", ENABLE_PGLOGICAL: "on"}},
        ) as (standin, backend),
        standin.serve() as endpoint,
    ):
        plan = parse(
            {
                "move": "shop",
                "engine": "dms",
                "source": {"host": "127.0.0.1", "user": "postgres"},
                "target": {"host": "127.0.0.1", "user": "postgres"},
                "databases": ["app"],
                "dms": dms_settings(endpoint, source=SOURCE, target=TARGET),
            }
        )
        assert plan.dms is not None
        clients = Clients.from_plan(
            plan.dms,
            retry=RetryPolicy(attempts=3, initial=0.01, maximum=0.05),
            polling=Polling(interval=0.02, backoff=2.0, max_interval=0.1),
        )
        yield World(
            lab,
            standin,
            backend,
            clients,
            DataMigration.for_plan(clients, plan.dms),
            SqlAdmin(clients, project=PROJECT),
            Monitoring(clients, project=PROJECT),
        )


def source_db(lab: Lab, databases: Databases, schema: str = SCHEMA) -> str:
    db = databases.create()
    with connect(lab.server("source"), db) as conn:
        conn.execute(schema)
    return db


def make_job(world: World, db: str, job_id: str = "job") -> None:
    """Profiles (the source reached as its superuser) and a job of one database."""
    source = world.lab.server("source")
    password = world.lab.password_file.read_text().strip()
    bodies = {
        "src": source_profile_body(
            instance=SOURCE,
            host=source.host,
            port=source.port,
            username=source.user,
            password=password,
        ),
        "dst": existing_destination_profile_body(instance=TARGET),
    }
    for profile_id, body in bodies.items():
        call = world.dms.create_profile(profile_id, body, request_id=f"{job_id}-{profile_id}")
        world.run(call, f"creating profile {profile_id}")
    body = job_body(
        source_profile=world.dms.profile_name("src"),
        destination_profile=world.dms.profile_name("dst"),
        connectivity=Connectivity.STATIC_IP,
        network=None,
        display_name="shop",
    )
    # The lab's source holds other tests' databases too: the job selects its own.
    body["objectsConfig"] = {
        "sourceObjectsConfig": {
            "objectsSelectionType": "SPECIFIED_OBJECTS",
            "objectConfigs": [{"objectIdentifier": {"database": db, "type": "DATABASE"}}],
        }
    }
    world.run(world.dms.create_job(job_id, body, request_id=f"{job_id}-create"), "creating job")


def phases_until_cdc(world: World, job_id: str = "job", seconds: float = 90) -> list[JobPhase]:
    """The job's phase at each read until it is CDC."""
    seen = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        job = world.dms.job(job_id)
        assert job is not None and job.state is JobState.RUNNING, job
        seen.append(job.phase)
        if job.phase is JobPhase.CDC:
            return seen
        time.sleep(0.1)
    raise AssertionError(f"the job is not in CDC after {seconds} s: {seen[-3:]}")


def started(world: World, db: str) -> list[JobPhase]:
    make_job(world, db)
    world.run(world.dms.verify_job("job"), "verify")
    world.run(world.dms.start_job("job"), "start")
    return phases_until_cdc(world)


def wait_for(predicate: Any, *, seconds: float = 30, what: str) -> None:
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def count(lab: Lab, side: str, db: str, table: str) -> int:
    with connect(lab.server(side), db) as conn:
        row = conn.execute(f"SELECT count(*) AS n FROM {table}").fetchone()
    assert row is not None
    return int(row["n"])


def ordinary_role(lab: Lab, db: str) -> str:
    """A login role on the target that may write `items`; its connection string."""
    password = "pw-clerk-1"
    name = f"clerk_{abs(hash(db)) % 10**8}"
    with connect(lab.server("target"), db) as conn:
        conn.execute("SET default_transaction_read_only = off")
        conn.execute(f"CREATE ROLE {name} LOGIN")
        conn.execute(f"ALTER ROLE {name} PASSWORD '{password}'")
        conn.execute(f"GRANT INSERT, SELECT ON items TO {name}")
        conn.execute(f"GRANT USAGE ON SEQUENCE items_id_seq TO {name}")
    target = lab.server("target")
    return psycopg.conninfo.make_conninfo(
        host=target.host, port=target.port, user=name, password=password, dbname=db
    )


def test_a_job_copies_then_replicates_read_only_until_promote(
    world: World, lab: Lab, databases: Databases
) -> None:
    db = source_db(lab, databases)
    phases = started(world, db)
    assert phases[0] is JobPhase.FULL_DUMP and phases[-1] is JobPhase.CDC

    # The dump: rows copied, every object owned by the role DMS leaves.
    assert count(lab, "target", db, "items") == 500
    assert count(lab, "target", db, "sales.orders") == 300
    with connect(lab.server("target"), db) as conn:
        owners = conn.execute(
            "SELECT c.relname, c.relkind, pg_get_userbyid(c.relowner) AS owner "
            "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname IN ('public', 'sales') AND c.relkind IN ('r', 'S', 'v') "
            "ORDER BY 1"
        ).fetchall()
        schema = conn.execute(
            "SELECT pg_get_userbyid(nspowner) AS owner FROM pg_namespace WHERE nspname = 'sales'"
        ).fetchone()
    assert [r["relname"] for r in owners] == [
        "big_orders",
        "items",
        "items_id_seq",
        "orders",
        "orders_id_seq",
    ]
    assert {r["owner"] for r in owners} == {OWNER}
    assert schema == {"owner": OWNER}

    # CDC: rows written on the source arrive, although the database is read-only.
    with connect(lab.server("source"), db) as conn:
        conn.execute("INSERT INTO items (name) SELECT 'late ' || g FROM generate_series(1, 50) g")
        conn.execute("UPDATE sales.orders SET amount = amount + 1000 WHERE id <= 10")
    wait_for(lambda: count(lab, "target", db, "items") == 550, what="CDC did not apply")
    wait_for(
        lambda: count(lab, "target", db, "sales.orders WHERE amount > 1000") == 10,
        what="the update did not arrive",
    )
    clerk = ordinary_role(lab, db)
    with (
        psycopg.connect(clerk, autocommit=True) as conn,
        pytest.raises(psycopg.errors.ReadOnlySqlTransaction) as refused,
    ):
        conn.execute("INSERT INTO items (id, name) VALUES (-1, 'mine')")
    assert "cannot execute INSERT in a read-only transaction" in str(refused.value)
    with (
        connect(lab.server("target"), db) as conn,
        pytest.raises(psycopg.errors.ReadOnlySqlTransaction),
    ):
        conn.execute("INSERT INTO items (id, name) VALUES (-1, 'admin')")  # a superuser too

    # Promote: replication ends, the database takes writes, sequences are behind.
    world.run(world.dms.promote_job("job"), "promote")
    job = world.dms.job("job")
    assert job is not None and job.state is JobState.COMPLETED
    with psycopg.connect(clerk, autocommit=True) as conn:
        conn.execute("INSERT INTO items (id, name) VALUES (-1, 'mine')")
    with connect(lab.server("source"), db) as conn:
        conn.execute("INSERT INTO items (name) VALUES ('after promote')")
        source_seq = conn.execute("SELECT last_value FROM items_id_seq").fetchone()
        slots = conn.execute(
            "SELECT count(*) AS n FROM pg_replication_slots WHERE database = current_database()"
        ).fetchone()
    time.sleep(0.5)
    assert count(lab, "target", db, "items WHERE name = 'after promote'") == 0
    with connect(lab.server("target"), db) as conn:
        target_seq = conn.execute("SELECT last_value, is_called FROM items_id_seq").fetchone()
        subscriptions = conn.execute("SELECT count(*) AS n FROM pglogical.subscription").fetchone()
    assert source_seq is not None and source_seq["last_value"] == 551
    assert target_seq == {"last_value": 1, "is_called": False}  # the engine must set it
    assert subscriptions == {"n": 0}
    assert slots == {"n": 0}  # pglogical dropped its slot with the subscription

    objects = world.dms.job_objects("job")
    assert [o.database for o in objects] == [db]

    world.run(world.dms.delete_job("job", request_id="job-delete"), "delete")
    with connect(lab.server("target"), db) as conn:
        nodes = conn.execute("SELECT count(*) AS n FROM pglogical.node").fetchone()
    assert nodes == {"n": 0}
    assert count(lab, "target", db, "items") == 551  # the data stays


def test_verify_refuses_a_table_without_a_primary_key(
    world: World, lab: Lab, databases: Databases
) -> None:
    db = source_db(lab, databases, SCHEMA + "CREATE TABLE notes (body text);")
    make_job(world, db)
    with pytest.raises(OperationFailed) as caught:
        world.run(world.dms.verify_job("job"), "verify")
    assert f"tables without a primary key in database {db}: public.notes" in caught.value.message


def test_verify_wants_the_source_s_flags_on_and_restarted(
    world: World, lab: Lab, databases: Databases
) -> None:
    make_job(world, source_db(lab, databases))

    def verify_error() -> str:
        with pytest.raises(OperationFailed) as caught:
            world.run(world.dms.verify_job("job"), "verify")
        return caught.value.message

    def patch(wanted: dict[str, str | None]) -> None:
        instance = world.sql.instance(SOURCE)
        assert instance is not None
        call = world.sql.patch_flags(instance, wanted)
        assert call is not None
        world.run(call, "flags")

    patch({LOGICAL_DECODING: None, ENABLE_PGLOGICAL: None})
    assert f"the source instance {SOURCE} needs the flag {LOGICAL_DECODING}=on" in verify_error()
    patch({LOGICAL_DECODING: "on", ENABLE_PGLOGICAL: "on"})
    assert f"the source instance {SOURCE} must be restarted" in verify_error()
    world.run(world.sql.restart(SOURCE), "restart")
    world.run(world.dms.verify_job("job"), "verify")


def test_lag_is_measured_on_the_source_and_seen_late(
    world: World, lab: Lab, databases: Databases
) -> None:
    db = source_db(lab, databases)
    started(world, db)
    labels = {"migration_job_id": "job"}

    def newest(metric: str, resource: str, by: dict[str, str]) -> tuple[float, datetime]:
        now = datetime.now(UTC)
        found = world.monitoring.series(
            metric, start=now - timedelta(minutes=5), end=now, resource=resource, labels=by
        )
        assert len(found) == 1, found
        point = found[0].points[0]  # newest first
        return point.value, point.end_time

    def visible() -> bool:
        now = datetime.now(UTC)
        return bool(
            world.monitoring.series(
                DMS_LAG_BYTES, start=now - timedelta(minutes=5), end=now, labels=labels
            )
        )

    wait_for(visible, seconds=DELAY * 5, what="no lag point after the delay")
    # Nothing applied: the subscription stopped, a burst written on the source.
    world.run(world.dms.stop_job("job"), "stop")
    with connect(lab.server("target"), db) as conn:
        disabled = conn.execute("SELECT sub_enabled FROM pglogical.subscription").fetchall()
    assert disabled == [{"sub_enabled": False}]
    with connect(lab.server("source"), db) as conn:
        conn.execute(
            "INSERT INTO items (name) SELECT repeat('x', 200) FROM generate_series(1, 5000)"
        )
    burst_at = datetime.now(UTC)
    time.sleep(PERIOD * 3)
    value, _ = newest(DMS_LAG_BYTES, DMS_RESOURCE, labels)
    assert value < 1_000_000  # the samples of the burst are not visible yet

    def late_point() -> bool:
        return newest(DMS_LAG_BYTES, DMS_RESOURCE, labels)[0] > 1_000_000

    wait_for(late_point, seconds=DELAY * 5, what="the burst never showed in the lag")
    seen_at = datetime.now(UTC)
    value, end_time = newest(DMS_LAG_BYTES, DMS_RESOURCE, labels)
    assert value > 1_000_000 and end_time >= burst_at
    assert seen_at - end_time >= timedelta(seconds=DELAY)  # late by the delay
    assert seen_at - burst_at >= timedelta(seconds=DELAY)

    wait_for(
        lambda: newest(DMS_LAG_SECONDS, DMS_RESOURCE, labels)[0] >= 1,
        seconds=DELAY * 5,
        what="the lag in seconds did not grow",
    )
    instance = {"database_id": f"{PROJECT}:{TARGET}"}
    assert newest(CLOUDSQL_LAG_BYTES, CLOUDSQL_RESOURCE, instance)[0] > 1_000_000

    # Applying again, the lag falls back.
    with connect(lab.server("target"), db) as conn:
        conn.execute(
            "SELECT pglogical.alter_subscription_enable(sub_name, true) FROM pglogical.subscription"
        )
    wait_for(
        lambda: newest(DMS_LAG_BYTES, DMS_RESOURCE, labels)[0] < 1_000_000,
        seconds=30,
        what="the lag did not fall once applied",
    )


def test_flags_are_applied_and_a_restart_restarts_the_server(world: World, lab: Lab) -> None:
    def started_at() -> datetime:
        with connect(lab.server("source")) as conn:
            row = conn.execute("SELECT pg_postmaster_start_time() AS t").fetchone()
        assert row is not None
        return row["t"]  # type: ignore[no-any-return]

    def setting(name: str) -> str:
        with connect(lab.server("source")) as conn:
            row = conn.execute("SELECT current_setting(%s) AS v", (name,)).fetchone()
        assert row is not None
        return str(row["v"])

    before = started_at()
    instance = world.sql.instance(SOURCE)
    assert instance is not None
    wanted: dict[str, str | None] = {
        "cloudsql.logical_decoding": "on",
        "cloudsql.enable_pglogical": "on",
        "max_locks_per_transaction": "96",  # needs a restart
        "log_min_duration_statement": "2500",  # a reload is enough
    }
    patch = world.sql.patch_flags(instance, wanted)
    assert patch is not None
    try:
        world.run(patch, "flags")
        patched = world.sql.instance(SOURCE)
        assert patched is not None
        assert {f.name: f.value for f in patched.flags} == wanted
        assert setting("log_min_duration_statement") == "2500ms"
        assert setting("max_locks_per_transaction") == "64"
        assert world.backend.pending_restart == {SOURCE}

        world.run(world.sql.restart(SOURCE), "restart")
        assert started_at() > before
        assert setting("max_locks_per_transaction") == "96"
        assert world.backend.pending_restart == set()
    finally:
        current = world.sql.instance(SOURCE)
        assert current is not None
        undo = world.sql.patch_flags(current, dict.fromkeys(wanted))
        if undo is not None:
            world.run(undo, "flags back")
        world.run(world.sql.restart(SOURCE), "restart")
    assert setting("max_locks_per_transaction") == "64"


def test_a_backup_run_is_a_dump_pg_restore_reads(
    world: World, lab: Lab, databases: Databases
) -> None:
    db = source_db(lab, databases)
    started_op = world.clients.execute(world.sql.insert_backup(SOURCE, description="cutover"))
    assert started_op.backup_id is not None
    world.clients.wait_for(started_op, timeout=60, what="backup")
    run = world.sql.backup_run(SOURCE, started_op.backup_id)
    assert run is not None and run.status.value == "SUCCESSFUL"
    files = world.backend.backups[(SOURCE, started_op.backup_id)]
    listings = [
        subprocess.run(
            [str(tools.bindir() / "pg_restore"), "--list", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for path in files
    ]
    ours = [text for text in listings if f"dbname: {db}" in text]
    assert len(ours) == 1
    assert "TABLE DATA public items" in ours[0] and "TABLE DATA sales orders" in ours[0]
