"""Row counts and checksums of tables, computed by the server, compared by meaning.

A table's rows are hashed on the server: each row is rendered as text from
normalised values (numeric without trailing zeros, floats without negative
zero, json as jsonb) in a session with fixed output settings (UTC, ISO dates,
hex bytea, shortest exact floats), so two servers render equal values the same
whatever their time zone, collation or column order. The md5 of that text goes
into an XOR per chunk of keys, with the chunk's row count: one scan of the
table gives every chunk. Chunks that differ are read again row by row.
"""

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from cutover.pg.connect import Connection
from cutover.pg.queries import load

Table = tuple[str, str]

# Output settings that make a value's text depend on the value alone.
SESSION = {
    "TimeZone": "UTC",
    "DateStyle": "ISO, YMD",
    "IntervalStyle": "postgres",
    "extra_float_digits": "1",
    "bytea_output": "hex",
}
INTEGER_KEYS = {"smallint", "integer", "bigint"}
CHUNK_ROWS = 10_000


@dataclass(frozen=True)
class Column:
    """A column and its type as `format_type` spells it."""

    name: str
    type: str


@dataclass(frozen=True)
class Shape:
    """What the checksum of a table needs: its columns and its primary key."""

    table: Table
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


def shapes(conn: Connection, tables: Sequence[Table]) -> dict[Table, Shape]:
    """The columns (in the source's order) and primary key of each table that exists."""
    rows = conn.execute(
        load("table_columns"), ([t[0] for t in tables], [t[1] for t in tables])
    ).fetchall()
    found: dict[Table, list[dict[str, Any]]] = {}
    for r in rows:
        found.setdefault((r["schema"], r["name"]), []).append(r)
    result = {}
    for table, columns in found.items():
        key = sorted(
            (c for c in columns if c["key_position"] is not None), key=lambda c: c["key_position"]
        )
        result[table] = Shape(
            table,
            tuple(Column(c["column"], c["type"]) for c in columns),
            tuple(Column(c["column"], c["type"]) for c in key),
        )
    return result


def _value(column: Column) -> sql.Composable:
    """The column's value in a form equal on both sides exactly when the values mean the same."""
    ident = sql.Identifier(column.name)
    if column.type.startswith("numeric") and not column.type.endswith("[]"):
        return sql.SQL("pg_catalog.trim_scale({})").format(ident)  # 1.50 is 1.5
    if column.type in ("double precision", "real"):
        return sql.SQL("({} + 0)").format(ident)  # -0 + 0 is 0; NaN stays NaN
    if column.type == "json":
        return sql.SQL("{}::jsonb").format(ident)  # key order and spaces do not matter
    return ident


def row_hash(columns: Sequence[Column]) -> sql.Composable:
    """A 64-bit hash of the row's normalised text (NULL and '' render differently)."""
    values = sql.SQL(", ").join(_value(c) for c in columns)
    return sql.SQL(
        "('x' || pg_catalog.left(pg_catalog.md5(ROW({})::text), 16))::bit(64)::bigint"
    ).format(values)


def _chunk(shape: Shape, width: int, buckets: int) -> sql.Composable:
    if shape.integer_key:
        return sql.SQL("({} / {})").format(sql.Identifier(shape.key[0].name), sql.Literal(width))
    keys = sql.SQL(", ").join(_value(c) for c in shape.key)
    return sql.SQL("(pg_catalog.hashtextextended(ROW({})::text, 0) & {})").format(
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
