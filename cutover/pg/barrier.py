"""The `_cutover` schema and its barrier table, on either side of a move."""

from psycopg import sql

from cutover.pg.connect import Connection
from cutover.pg.execute import change
from cutover.pg.queries import load
from cutover.steps import Change

SCHEMA = "_cutover"


def barrier_table_exists(conn: Connection) -> bool:
    """Whether `_cutover.barrier` exists in the connected database."""
    row = conn.execute(sql.SQL("SELECT pg_catalog.to_regclass('_cutover.barrier') AS t")).fetchone()
    return row is not None and row["t"] is not None


def create_barrier_table(conn: Connection, *, target: str, dry_run: bool) -> list[Change]:
    """Create the schema and the barrier table; both statements guard themselves."""
    return [
        change(
            conn,
            sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(SCHEMA)),
            target=target,
            dry_run=dry_run,
        ),
        change(conn, load("create_barrier_table"), target=target, dry_run=dry_run),
    ]
