"""The fence on real servers: whom it takes LOGIN from when the plan names no role."""

import json
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from cutover import database
from cutover.lab import Lab
from cutover.pg.connect import pool
from cutover.plan import load
from cutover.types import Side
from tests.conftest import Databases, Result, connect

pytestmark = pytest.mark.integration


def logs_in(lab: Lab, role: str, password: str, db: str) -> bool:
    """Whether the role may open a session on the source now."""
    server = lab.server("source")
    try:
        with psycopg.connect(
            host=server.host, port=server.port, user=role, password=password, dbname=db
        ):
            return True
    except psycopg.OperationalError as exc:
        assert "not permitted to log in" in str(exc), exc
        return False


@pytest.fixture
def shop(lab: Lab, databases: Databases) -> Iterator[tuple[str, dict[str, str], str]]:
    """A database whose tables an owner, a grantee and a member of the owner may write, and a
    reader may only read; a superuser other than the bootstrap one, for the plan. Yields the
    database, the roles by part, and the password of them all."""
    tag = uuid.uuid4().hex[:6]
    roles = {part: f"{part}_{tag}" for part in ("owner", "clerk", "member", "reader", "dba")}
    password = uuid.uuid4().hex
    db = databases.create()
    with connect(lab.server("source")) as conn:
        for part, role in roles.items():
            extra = " SUPERUSER" if part == "dba" else ""
            conn.execute(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'{extra}")
        conn.execute(f"GRANT {roles['owner']} TO {roles['member']}")
    with connect(lab.server("source"), db) as conn:
        conn.execute(f"CREATE SCHEMA shop AUTHORIZATION {roles['owner']}")
        conn.execute(f"SET ROLE {roles['owner']}")
        conn.execute("CREATE TABLE shop.items (id int PRIMARY KEY)")
        conn.execute(f"GRANT USAGE ON SCHEMA shop TO {roles['clerk']}, {roles['reader']}")
        conn.execute(f"GRANT INSERT, UPDATE ON shop.items TO {roles['clerk']}")
        conn.execute(f"GRANT SELECT ON shop.items TO {roles['reader']}")
    yield db, roles, password
    with connect(lab.server("source")) as conn:  # whatever a failed test left fenced
        for role in ("postgres", *roles.values()):
            conn.execute(f'ALTER ROLE "{role}" LOGIN')
            conn.execute(f'ALTER ROLE "{role}" RESET default_transaction_read_only')


def test_without_fence_roles_the_writers_of_the_tables_are_fenced_and_no_superuser(
    lab: Lab,
    shop: tuple[str, dict[str, str], str],
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    db, roles, password = shop
    monkeypatch.setenv("DBA_PASSWORD", password)
    path = write_plan([db], source={"user": roles["dba"], "password": "env:DBA_PASSWORD"})
    writers = sorted(roles[part] for part in ("owner", "clerk", "member"))

    checked = cutover("check", "-p", str(path), "--json")
    fence = [f for f in json.loads(checked.stdout)["findings"] if f["check"] == "fence"]
    assert [f["detail"] for f in fence] == [
        "the switch fences 3 roles (those that may write to the moved tables; superusers are "
        "never fenced): " + ", ".join(writers)
    ]

    plan = load(path)
    with pool({"source": plan.source, "target": plan.target}) as servers:
        database.create_barrier_table(servers, Side.SOURCE, db, dry_run=False)  # as prepare
        database.fence_source(plan, servers, dry_run=False)
        try:
            assert database.fenced_roles(plan, servers) == writers
            assert logs_in(lab, "postgres", lab.password_file.read_text().strip(), db)
            assert logs_in(lab, roles["reader"], password, db)
            for role in writers:
                assert not logs_in(lab, role, password, db)
        finally:
            database.unfence_source(plan, servers, dry_run=False)
    assert all(logs_in(lab, role, password, db) for role in writers)
