"""Creating databases and running shipped scripts (the lab, prepare)."""

from psycopg import sql

from cutover.pg.connect import Connection
from cutover.pg.execute import change
from cutover.pg.queries import load
from cutover.steps import Change


def database_exists(conn: Connection, name: str) -> bool:
    """Whether the database exists on the connected server."""
    row = conn.execute(
        sql.SQL("SELECT 1 FROM pg_catalog.pg_database WHERE datname = %s"), (name,)
    ).fetchone()
    return row is not None


def create_database(
    conn: Connection, name: str, *, where: str, dry_run: bool, owner: str | None = None
) -> list[Change]:
    """CREATE DATABASE unless it exists (the connection must be in autocommit)."""
    if database_exists(conn, name):
        return []
    statement = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
    if owner is not None:
        statement = sql.SQL("{} OWNER {}").format(statement, sql.Identifier(owner))
    return [change(conn, statement, where=where, dry_run=dry_run)]


def run_script(conn: Connection, name: str, *, as_role: str | None = None) -> None:
    """Run the shipped script `queries/<name>.sql` in one transaction (as `as_role`)."""
    with conn.transaction():
        if as_role is not None:
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(as_role)))
        conn.execute(load(name))


def allow_writes(conn: Connection) -> None:
    """Let this session write even where the database was made read-only (an old source)."""
    conn.execute(sql.SQL("SET default_transaction_read_only = off"))
