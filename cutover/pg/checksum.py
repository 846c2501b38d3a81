"""Row counts and checksums of tables, computed by the server, compared by meaning.

A row is hashed on the server by `hash_record_extended` (PostgreSQL 14+):
each column by its type's own hash function, which gives equal values equal
hashes (1.5 and 1.50, 0 and -0, one instant in any time zone, jsonb by
content), with the source's column order on both sides. json is hashed as
jsonb; a type without a hash function, and a type whose values are this
server's OIDs (an enum, whose hash is its label's OID; regclass and the other
OID aliases; an array, domain, range or composite holding one), is hashed as
its text, rendered in a
session with fixed output settings (UTC, ISO dates, hex bytea, shortest exact
floats). A chunk of keys gets the XOR of its rows' hashes and its row count,
all chunks from one scan; chunks that differ are read again row by row.
Hashing typed values costs a third of rendering rows as text and hashing that.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

import psycopg
from psycopg import sql

from cutover.errors import CannotCompare
from cutover.pg.catalog import server_version
from cutover.pg.connect import Connection
from cutover.pg.ident import quote
from cutover.pg.queries import load
from cutover.types import TableName

# The session of a comparison: output settings that make a value's text depend on the value alone.
SESSION = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
    # The planner cannot estimate how many chunks `key / width` makes, and may sort
    # every row to group them; hashing them into a few thousand groups is what fits.
    "enable_sort": "off",
}
INTEGER_KEYS = {"smallint", "integer", "bigint"}
CHUNK_ROWS = 10_000


@dataclass(frozen=True)
class Column:
    """A column, its type as `format_type` spells it, and how its values are hashed."""

    name: str
    type: str
    hashable: bool = True  # the type has a hash function
    by_oid: bool = False  # its values are this server's OIDs: hashed as their text


@dataclass(frozen=True)
class Shape:
    """What the checksum of a table needs: its columns and its primary key."""

    table: TableName
    columns: tuple[Column, ...]
    key: tuple[Column, ...]  # empty: no primary key

    @property
    def integer_key(self) -> bool:
        """A one-column integer key: chunks are key ranges, read back by index."""
        return len(self.key) == 1 and self.key[0].type in INTEGER_KEYS


@contextmanager
def snapshot(conn: Connection, *, exported: str | None = None) -> Iterator[str]:
    """A read-only repeatable-read transaction with the fixed output settings.

    Yields the snapshot's id for other connections; with `exported` it joins
    that snapshot instead of taking its own.
    """
    with conn.transaction():
        conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        if exported is not None:
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(exported)))
        for name, value in SESSION.items():
            conn.execute("SELECT pg_catalog.set_config(%s, %s, true)", (name, value))
        if exported is not None:
            yield exported
            return
        row = conn.execute("SELECT pg_catalog.pg_export_snapshot() AS id").fetchone()
        assert row is not None
        yield str(row["id"])


def shapes(conn: Connection, tables: Sequence[TableName]) -> dict[TableName, Shape]:
    """The columns (in the source's order) and primary key of each table that exists."""
    rows = conn.execute(
        load("table_columns"), ([t[0] for t in tables], [t[1] for t in tables])
    ).fetchall()
    found: dict[TableName, list[dict[str, Any]]] = {}
    for r in rows:
        found.setdefault(TableName(r["schema"], r["name"]), []).append(r)
    result = {}
    for table, columns in found.items():
        key = sorted(
            (c for c in columns if c["key_position"] is not None), key=lambda c: c["key_position"]
        )
        result[table] = Shape(
            table,
            tuple(Column(c["column"], c["type"], by_oid=c["by_oid"]) for c in columns),
            tuple(Column(c["column"], c["type"], by_oid=c["by_oid"]) for c in key),
        )
    return result


def _value(column: Column) -> sql.Composable:
    """The column's value as it is hashed: equal hashes exactly when the values mean the same."""
    ident = sql.Identifier(column.name)
    if column.type == "json":
        return sql.SQL("{}::jsonb").format(ident)  # key order and spaces do not matter
    if not column.hashable or column.by_oid:
        return sql.SQL("{}::text").format(ident)
    return ident


def row_hash(columns: Sequence[Column]) -> sql.Composable:
    """A 64-bit hash of the row's values (a NULL hashes apart from '')."""
    values = sql.SQL(", ").join(_value(c) for c in columns)
    return sql.SQL("pg_catalog.hash_record_extended(ROW({}), 0)").format(values)


def hashed(conn: Connection, shape: Shape) -> Shape:
    """The shape with each column marked whether its type can be hashed as it is."""
    if server_version(conn) < 140000:
        raise CannotCompare(
            f"checksums need PostgreSQL 14 or later (hash_record_extended); {quote(shape.table)} "
            "is on an older server",
            hint="use --mode count",
        )
    if _can_hash(conn, shape.table, shape.columns):
        return shape
    columns = tuple(replace(c, hashable=_can_hash(conn, shape.table, [c])) for c in shape.columns)
    keys = {c.name: c for c in columns}
    return replace(shape, columns=columns, key=tuple(keys[k.name] for k in shape.key))


def _can_hash(conn: Connection, table: TableName, columns: Sequence[Column]) -> bool:
    """Whether the server hashes these columns: a NULL of each column's type is hashed once."""
    names = sql.SQL(", ").join(sql.Identifier(c.name) for c in columns)
    probe = sql.SQL(
        "SELECT {hash} FROM (SELECT 1 AS cutover_one) AS one "
        "LEFT JOIN (SELECT {names} FROM ONLY {table} LIMIT 0) AS x ON true"
    ).format(hash=row_hash(columns), names=names, table=sql.Identifier(*table))
    try:
        with conn.transaction():  # a savepoint: a type without a hash only fails the probe
            conn.execute(probe)
    except psycopg.Error:
        return False
    return True


def _chunk(shape: Shape, width: int, buckets: int) -> sql.Composable:
    if shape.integer_key:
        return sql.SQL("({} / {})").format(sql.Identifier(shape.key[0].name), sql.Literal(width))
    keys = sql.SQL(", ").join(_value(c) for c in shape.key)
    return sql.SQL("(pg_catalog.hash_record_extended(ROW({}), 0) & {})").format(
        keys, sql.Literal(buckets - 1)
    )


@dataclass(frozen=True)
class Chunking:
    """How a table's keys are cut into chunks: by integer ranges, or by a hash of the key."""

    width: int  # keys per chunk (integer keys)
    buckets: int  # a power of two (other keys)


def chunking(conn: Connection, shape: Shape) -> Chunking:
    """Chunks of about CHUNK_ROWS rows, from the planner's row estimate and the key's range."""
    table = sql.Identifier(*shape.table)
    row = conn.execute(
        sql.SQL(
            # Never analysed (reltuples -1): about 100 bytes a row.
            "SELECT (CASE WHEN c.reltuples > 0 THEN c.reltuples "
            "ELSE pg_catalog.pg_relation_size(c.oid) / 100 END)::bigint AS n "
            "FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = %s AND c.relname = %s"
        ),
        shape.table,
    ).fetchone()
    estimate = int(row["n"]) if row else 0
    chunks = max(1, estimate // CHUNK_ROWS)
    buckets = 1 << max(0, (chunks - 1).bit_length())
    if not shape.integer_key:
        return Chunking(1, buckets)
    key = sql.Identifier(shape.key[0].name)
    span = conn.execute(
        sql.SQL("SELECT min({k}) AS lo, max({k}) AS hi FROM ONLY {t}").format(k=key, t=table)
    ).fetchone()
    if span is None or span["lo"] is None:
        return Chunking(CHUNK_ROWS, buckets)
    keys = int(span["hi"]) - int(span["lo"]) + 1
    return Chunking(max(1, keys // chunks), buckets)


def summarise(conn: Connection, shape: Shape, chunks: Chunking) -> dict[int, tuple[int, int]]:
    """Each chunk's row count and XOR of row hashes, in one scan."""
    query = sql.SQL(
        "SELECT {chunk} AS chunk, count(*) AS n, pg_catalog.bit_xor({hash}) AS h "
        "FROM ONLY {table} GROUP BY 1"
    ).format(
        chunk=_chunk(shape, chunks.width, chunks.buckets),
        hash=row_hash(shape.columns),
        table=sql.Identifier(*shape.table),
    )
    return {int(r["chunk"]): (int(r["n"]), int(r["h"])) for r in conn.execute(query)}


def chunk_range(chunk: int, width: int) -> tuple[int, int]:
    """The first and last integer key of a chunk `key / width`.

    Integer division truncates towards zero, so chunk 0 holds -(width-1) to width-1.
    """
    low = chunk * width - (width - 1 if chunk <= 0 else 0)
    high = chunk * width + (width - 1 if chunk >= 0 else 0)
    return low, high


def _chunk_filter(shape: Shape, chunks: Chunking, ids: Sequence[int]) -> sql.Composable:
    if not shape.integer_key:
        return sql.SQL("{} = ANY({})").format(
            _chunk(shape, chunks.width, chunks.buckets), sql.Literal(list(ids))
        )
    key = sql.Identifier(shape.key[0].name)
    ranges = [
        sql.SQL("{} BETWEEN {} AND {}").format(key, *map(sql.Literal, chunk_range(c, chunks.width)))
        for c in ids
    ]
    return sql.SQL(" OR ").join(ranges)


def rows(
    conn: Connection, shape: Shape, chunks: Chunking, ids: Sequence[int]
) -> dict[tuple[Any, ...], int]:
    """Each row's key and hash, in the given chunks."""
    return _hashes(conn, shape, _chunk_filter(shape, chunks, ids))


def rows_by_key(
    conn: Connection, shape: Shape, keys: Sequence[tuple[Any, ...]]
) -> dict[tuple[Any, ...], int]:
    """The hash of the rows with these keys (those that exist)."""
    return _hashes(conn, shape, key_filter(shape, keys)) if keys else {}


def _hashes(conn: Connection, shape: Shape, where: sql.Composable) -> dict[tuple[Any, ...], int]:
    query = sql.SQL(
        "SELECT {keys}, {hash} AS cutover_row_hash FROM ONLY {table} WHERE {where}"
    ).format(
        keys=sql.SQL(", ").join(sql.Identifier(c.name) for c in shape.key),
        hash=row_hash(shape.columns),
        table=sql.Identifier(*shape.table),
        where=where,
    )
    n = len(shape.key)
    return {tuple(r.values())[:n]: int(r["cutover_row_hash"]) for r in conn.execute(query)}


def key_filter(shape: Shape, keys: Sequence[tuple[Any, ...]]) -> sql.Composable:
    """`(k1, k2) IN ((v1, v2), ...)` with every value a literal."""
    return sql.SQL("({}) IN ({})").format(
        sql.SQL(", ").join(sql.Identifier(c.name) for c in shape.key),
        sql.SQL(", ").join(
            sql.SQL("({})").format(sql.SQL(", ").join(sql.Literal(v) for v in key)) for key in keys
        ),
    )


def show_rows(conn: Connection, shape: Shape, keys: Sequence[tuple[Any, ...]]) -> str:
    """The statement that shows these rows, to run on either side."""
    query = sql.SQL("SELECT * FROM {} WHERE {}").format(
        sql.Identifier(*shape.table), key_filter(shape, keys)
    )
    return query.as_string(conn)
