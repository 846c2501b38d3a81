"""`cutover verify` on real servers: rows of many types, replicated, then single differences."""

import itertools
import json
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from psycopg.types.json import Json, Jsonb

from cutover import api, verify
from cutover.plan import load as load_plan
from tests.conftest import Databases, Result, connect
from tests.integration.conftest import Running

pytestmark = pytest.mark.integration

TYPED = """
CREATE TABLE typed (
    id bigint PRIMARY KEY,
    n numeric, f double precision, r real, ts timestamptz, d date,
    j jsonb, js json, ia integer[], ta text[], b bytea, t text, tc text COLLATE "C",
    bo boolean, u uuid, iv interval
);
CREATE TABLE pairs (a text, b integer, v text, PRIMARY KEY (a, b));
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE feeling AS (m mood, n integer);
CREATE TABLE tagged (
    m mood PRIMARY KEY, ms mood[], f feeling, c regclass, o regrole, v text
);
"""
COLUMNS = ("id", "n", "f", "r", "ts", "d", "j", "js", "ia", "ta", "b", "t", "tc", "bo", "u", "iv")

texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=6,
)
zones = st.sampled_from(
    [UTC, timezone(timedelta(hours=5, minutes=30)), timezone(-timedelta(hours=8))]
)
rows = st.fixed_dictionaries(
    {
        "n": st.none()
        | st.integers(0, 6)
        .flatmap(lambda places: st.decimals(allow_nan=True, allow_infinity=True, places=places))
        .map(lambda d: Decimal("NaN") if d.is_nan() else d),  # PostgreSQL has one NaN
        "f": st.none() | st.floats(),
        "r": st.none() | st.floats(width=32),
        "ts": st.none() | st.datetimes(datetime(1, 1, 2), datetime(9999, 12, 30), timezones=zones),
        "d": st.none() | st.dates(),
        "j": st.none() | json_values.map(Jsonb),
        "js": st.none() | json_values.map(Json),
        "ia": st.none() | st.lists(st.none() | st.integers(-(2**31), 2**31 - 1), max_size=4),
        "ta": st.none() | st.lists(st.none() | texts, max_size=4),
        "b": st.none() | st.binary(max_size=16),
        "t": st.none() | texts,
        "tc": st.none() | texts,
        "bo": st.none() | st.booleans(),
        "u": st.none() | st.uuids(),
        "iv": st.none() | st.timedeltas(timedelta(days=-9999), timedelta(days=9999)),
    }
)
# One difference made on the target, and how it shows.
INJECTIONS = {
    "changed value": ("changed", "UPDATE typed SET tc = coalesce(tc, '') || 'x' WHERE id = %s"),
    "missing row": ("missing", "DELETE FROM typed WHERE id = %s"),
    "extra row": ("extra", None),
    "NULL vs empty": (
        "changed",
        "UPDATE typed SET t = CASE WHEN t IS NULL THEN '' ELSE NULL END WHERE id = %s",
    ),
}


@pytest.fixture
def moving(
    databases: Databases, write_plan: Callable[..., Path], cutover: Callable[..., Result]
) -> Iterator[tuple[str, Path]]:
    """A started native move of a database with a table of many types."""
    db = databases.create()
    plan = write_plan([db], move=f"v{uuid.uuid4().hex[:8]}")
    with connect(load_plan(plan).source, db) as conn:
        conn.execute(TYPED)
    assert cutover("prepare", "-p", str(plan)).code == 0
    started = cutover("start", "-p", str(plan), "--wait")
    assert started.code == 0, started.stdout + started.stderr
    yield db, plan


def run_verify(plan_path: Path) -> verify.Report:
    """verify as the command runs it, in this process."""
    plan = load_plan(plan_path)
    return api.verify(plan, mode=verify.Mode.CHECKSUM, tables=None, jobs=2, max_keys=20)


def insert(
    conn: psycopg.Connection[Any], table_rows: list[dict[str, Any]], first: int
) -> list[int]:
    ids = list(range(first, first + len(table_rows)))
    with conn.cursor() as cur:
        cur.executemany(
            f"INSERT INTO typed ({', '.join(COLUMNS)}) VALUES ({', '.join(['%s'] * len(COLUMNS))})",
            [(i, *(row[c] for c in COLUMNS[1:])) for i, row in zip(ids, table_rows, strict=True)],
        )
    return ids


def test_rows_of_many_types_compare_equal_and_each_injected_difference_is_found_by_key(
    moving: tuple[str, Path],
) -> None:
    db, plan_path = moving
    plan = load_plan(plan_path)
    ids = itertools.count(1, 1000)

    @settings(
        max_examples=12,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(
        table_rows=st.lists(rows, min_size=1, max_size=8),
        injection=st.sampled_from(sorted(INJECTIONS)),
        pick=st.integers(min_value=0),
    )
    def check(table_rows: list[dict[str, Any]], injection: str, pick: int) -> None:
        with connect(plan.source, db) as source, connect(plan.target, db) as target:
            inserted = insert(source, table_rows, next(ids))
            equal = run_verify(plan_path)
            assert equal.differences == 0 and equal.errors == 0, equal.tables

            key = inserted[pick % len(inserted)]
            kind, statement = INJECTIONS[injection]
            if statement is None:  # a row the source never had
                key = inserted[-1] + 1
                target.execute("INSERT INTO typed (id, t) VALUES (%s, 'only here')", (key,))
            else:
                target.execute(statement, (key,))
            found = run_verify(plan_path)
            typed = next(t for t in found.tables if t.name == "typed")
            assert typed.differences == 1, (injection, typed)
            assert typed.keys == (verify.Difference(kind, (key,)),)
            assert typed.show is not None and str(key) in typed.show
            assert sum(t.differences for t in found.tables if t.name != "typed") == 0

            source.execute("DELETE FROM typed")
            target.execute("DELETE FROM typed")

    check()


def test_values_stored_as_each_server_s_oids_compare_by_what_they_name(
    moving: tuple[str, Path],
) -> None:
    """An enum's hash is its label's OID, a regclass is one: both differ between servers."""
    db, plan_path = moving
    plan = load_plan(plan_path)
    enum_oids = "SELECT array_agg(oid ORDER BY enumsortorder) AS o FROM pg_enum"
    with connect(plan.source, db) as source, connect(plan.target, db) as target:
        assert source.execute(enum_oids).fetchone() != target.execute(enum_oids).fetchone()
        source.execute(
            "INSERT INTO tagged VALUES "
            "('sad', '{sad,happy}', ROW('ok', 1), 'typed', 'postgres', 'a'), "
            "('ok', NULL, ROW('happy', NULL), 'pairs', NULL, 'b'), "
            "('happy', '{}', NULL, NULL, 'postgres', 'c')"
        )
        equal = run_verify(plan_path)
        assert equal.differences == 0 and equal.errors == 0, equal.tables

        target.execute("UPDATE tagged SET ms = '{ok}' WHERE m = 'ok'")
        found = run_verify(plan_path)
    tagged = next(t for t in found.tables if t.name == "tagged")
    assert tagged.keys == (verify.Difference("changed", ("ok",)),)
    assert sum(t.differences for t in found.tables) == 1


def test_values_equal_in_meaning_are_equal_whatever_the_target_renders(
    moving: tuple[str, Path],
) -> None:
    db, plan_path = moving
    plan = load_plan(plan_path)
    with connect(plan.source, db) as source, connect(plan.target, db) as target:
        source.execute(
            "INSERT INTO typed (id, n, f, ts, js, tc) VALUES "
            "(1, 1.5, 0, '2026-01-01 12:00+00', '{\"a\":1,\"b\":[1,2]}', 'Ärger')"
        )
        source.execute(
            "INSERT INTO pairs VALUES ('Zebra', 1, 'x'), ('apfel', 2, 'y'), ('Äpfel', 3, NULL)"
        )
        assert run_verify(plan_path).differences == 0
        # The same meanings, written differently on the target.
        target.execute(
            f"ALTER DATABASE \"{db.replace(chr(34), chr(34) * 2)}\" SET TimeZone = 'Asia/Kathmandu'"
        )
        target.execute(
            "UPDATE typed SET n = 1.5000, f = '-0', ts = '2026-01-01 17:45+05:45', "
            'js = \'{ "a" : 1, "b" : [1, 2] }\' WHERE id = 1'
        )
        target.execute('ALTER TABLE typed ALTER COLUMN tc TYPE text COLLATE "POSIX"')
        target.execute('ALTER TABLE pairs ALTER COLUMN a TYPE text COLLATE "C"')
    report = run_verify(plan_path)
    assert report.differences == 0, report.tables
    pairs = next(t for t in report.tables if t.name == "pairs")
    assert pairs.source_rows == pairs.target_rows == 3


def test_the_command_reports_differences_with_exit_codes_json_and_metrics(
    moving: tuple[str, Path], cutover: Callable[..., Result]
) -> None:
    db, plan_path = moving
    plan = load_plan(plan_path)
    with connect(plan.source, db) as source:
        source.execute("INSERT INTO pairs SELECT 'k' || g, g, 'v' FROM generate_series(1, 500) g")
    equal = cutover("verify", "-p", str(plan_path))
    assert equal.code == 0, equal.stdout + equal.stderr
    assert "source and target are equal" in equal.stdout

    with connect(plan.target, db) as target:
        target.execute("UPDATE pairs SET v = 'w' WHERE a = 'k42' AND b = 42")
    differs = cutover("verify", "-p", str(plan_path), "--json")
    assert differs.code == 1, differs.stdout + differs.stderr
    data = json.loads(differs.stdout)
    pairs = next(t for t in data["tables"] if t["table"] == '"public"."pairs"')
    assert pairs["keys"] == [{"kind": "changed", "key": ["k42", 42]}]
    assert 'WHERE ("a", "b") IN ((\'k42\', 42))' in pairs["show"]
    counted = cutover("verify", "-p", str(plan_path), "--mode", "count")
    assert counted.code == 0  # the same number of rows
    scraped = cutover("metrics", "-p", str(plan_path), "--once").stdout
    label = db.replace('"', '\\"')  # as the exposition format escapes it
    assert f'mismatches{{database="{label}",mode="count",move="{plan.move}"}} 0.0' in scraped

    wrong = cutover("verify", "-p", str(plan_path), "--table", "public.nope")
    assert wrong.code == 2
    assert '"public"."nope"' in wrong.stderr


@pytest.mark.parametrize("engine", ["native"])
def test_a_move_under_load_verifies_equal_while_it_replicates(
    under_load: Running, cutover: Callable[..., Result]
) -> None:
    before = under_load.work.log.acked
    result = cutover("verify", "-p", str(under_load.plan), "--json")
    assert under_load.work.log.acked > before + 50  # the application wrote all along
    assert result.code == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["differences"] == 0
    assert data["consistent_points"][under_load.db].startswith("barrier at ")
    assert sum(t["source_rows"] for t in data["tables"]) > 0

    for _ in range(5):  # counts compare the same moment as the checksums, while rows arrive
        before = under_load.work.log.acked
        counted = cutover("verify", "-p", str(under_load.plan), "--mode", "count", "--json")
        assert under_load.work.log.acked > before + 20
        assert counted.code == 0, counted.stdout + counted.stderr
        assert json.loads(counted.stdout)["differences"] == 0
