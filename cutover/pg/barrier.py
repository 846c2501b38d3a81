"""The `_cutover` schema and its barrier table, on either side of a move."""

from psycopg import sql

from cutover.pg.connect import Connection
from cutover.pg.execute import change, render, run
from cutover.pg.queries import load
from cutover.steps import Change
from cutover.types import TableName

SCHEMA = "_cutover"
TABLE = TableName(SCHEMA, "barrier")


def barrier_table_exists(conn: Connection) -> bool:
    """Whether `_cutover.barrier` exists in the connected database."""
    row = conn.execute(sql.SQL("SELECT pg_catalog.to_regclass('_cutover.barrier') AS t")).fetchone()
    return row is not None and row["t"] is not None


def create_barrier_table(conn: Connection, *, where: str, dry_run: bool) -> list[Change]:
    """Create the schema and the barrier table; both statements guard themselves."""
    return [
        change(
            conn,
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)),
            where=where,
            dry_run=dry_run,
        ),
        change(conn, load("create_barrier_table"), where=where, dry_run=dry_run),
    ]


def marker(move: str) -> sql.Composed:
    """The marker row's INSERT; its token, chosen when it is written, is `%(token)s`."""
    return sql.SQL("INSERT INTO {} (token, move) VALUES ({}, {})").format(
        sql.Identifier(*TABLE), sql.Placeholder("token"), sql.Literal(move)
    )


def render_marker(conn: Connection, move: str, *, where: str) -> Change:
    """What write_marker sends, its token left a placeholder: a dry run's line."""
    return Change(where, render(conn, marker(move)))


def write_marker(conn: Connection, move: str, token: str) -> str:
    """Commit a marker row on the source; returns the WAL position after its commit."""
    run(conn, marker(move), {"token": token})
    row = conn.execute(sql.SQL("SELECT pg_catalog.pg_current_wal_lsn()::text AS lsn")).fetchone()
    assert row is not None
    return str(row["lsn"])


def marker_arrived(target: Connection, token: str) -> bool:
    """Whether the target has applied the marker row."""
    row = target.execute(
        sql.SQL("SELECT 1 FROM _cutover.barrier WHERE token = %s"), (token,)
    ).fetchone()
    return row is not None


def flush(target: Connection) -> None:
    """A synchronous commit on the target: its WAL, every commit before this one, is on disk."""
    with target.transaction():
        target.execute(sql.SQL("SET LOCAL synchronous_commit = on"))
        target.execute(sql.SQL("SELECT pg_catalog.txid_current()"))


def slot_confirmed(source: Connection, slot: str, lsn: str) -> bool:
    """Whether the subscriber has confirmed everything up to `lsn` as flushed."""
    row = source.execute(
        sql.SQL(
            "SELECT confirmed_flush_lsn >= %s::pg_lsn AS ok FROM pg_catalog.pg_replication_slots "
            "WHERE slot_name = %s"
        ),
        (lsn, slot),
    ).fetchone()
    return bool(row and row["ok"])


def schema_exists(conn: Connection) -> bool:
    """Whether the `_cutover` schema exists in the connected database."""
    row = conn.execute(
        sql.SQL("SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = %s"), (SCHEMA,)
    ).fetchone()
    return row is not None


def drop_schema(conn: Connection, *, where: str, dry_run: bool) -> list[Change]:
    """Drop the `_cutover` schema and its barrier table."""
    statement = sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(SCHEMA))
    return [change(conn, statement, where=where, dry_run=dry_run)]
