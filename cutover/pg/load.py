"""The SQL of the lab's write load: its tables and the three writes it makes."""

from typing import LiteralString

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from cutover.pg.connect import Connection
from cutover.pg.replication import password_verifier

PREFIX = "load_"


def table_names(count: int) -> list[str]:
    """The load's tables: load_01, load_02, ..."""
    return [f"{PREFIX}{i:02d}" for i in range(1, count + 1)]


KEYLESS = "load_events"  # a table without a primary key: prepare's backfill gives it one


def create_schema(
    conn: Connection,
    *,
    tables: int,
    writer: str,
    owner: str | None = None,
    keyless: bool = False,
) -> None:
    """The load's tables and its standalone sequence, writable by `writer`.

    With `owner` they belong to that role, as an application's own schema does,
    and `writer` writes with table grants only. With `keyless`, one more table
    (`load_events`) has no primary key.
    """
    with conn.transaction():
        if owner is not None:
            conn.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(owner)))
        conn.execute(sql.SQL("CREATE SEQUENCE IF NOT EXISTS load_ticket_seq"))
        for name in table_names(tables):
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (id bigserial PRIMARY KEY, v bigint NOT NULL, "
                    "ticket bigint NOT NULL DEFAULT nextval('load_ticket_seq'), "
                    "at timestamptz NOT NULL DEFAULT now())"
                ).format(sql.Identifier(name))
            )
        if keyless:
            conn.execute(sql.SQL("CREATE SEQUENCE IF NOT EXISTS load_events_id_seq"))
            conn.execute(
                sql.SQL(
                    "CREATE TABLE IF NOT EXISTS {} (id bigint NOT NULL "
                    "DEFAULT nextval('load_events_id_seq'), v bigint NOT NULL, "
                    "at timestamptz NOT NULL DEFAULT now())"
                ).format(sql.Identifier(KEYLESS))
            )
        ident = sql.Identifier(writer)
        conn.execute(sql.SQL("GRANT USAGE ON SCHEMA public TO {}").format(ident))
        conn.execute(
            sql.SQL(
                "GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {}"
            ).format(ident)
        )
        conn.execute(sql.SQL("GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {}").format(ident))


def ensure_login_role(
    conn: Connection, role: str, password: str, *, options: LiteralString = ""
) -> None:
    """A login role with this password (created, or its password reset).

    `options` are role attributes from cutover's own code (e.g. "CREATEROLE REPLICATION").
    """
    exists = conn.execute(
        sql.SQL("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s"), (role,)
    ).fetchone()
    verb = sql.SQL("ALTER ROLE" if exists else "CREATE ROLE")
    conn.execute(
        sql.SQL("{} {} LOGIN {} PASSWORD {}").format(
            verb,
            sql.Identifier(role),
            sql.SQL(options),
            sql.Literal(password_verifier(conn, role, password)),
        )
    )


def connect_dsn(dsn: str) -> Connection:
    """A connection for one load worker (autocommit: each write is acknowledged alone).

    No server-side prepared statements: through a PgBouncer in transaction pooling
    (before 1.21), a statement prepared on one server is missing on the next.
    """
    conn = psycopg.connect(dsn, autocommit=True, connect_timeout=2, row_factory=dict_row)
    conn.prepare_threshold = None
    return conn


def insert(conn: Connection, table: str, value: int) -> tuple[int, int]:
    """Insert a row; its id, and the port of the server that took it."""
    row = conn.execute(
        sql.SQL("INSERT INTO {} (v) VALUES (%s) RETURNING id, inet_server_port() AS port").format(
            sql.Identifier(table)
        ),
        (value,),
    ).fetchone()
    assert row is not None
    return int(row["id"]), int(row["port"])


def update(conn: Connection, table: str, row_id: int, value: int) -> int | None:
    """Set a row's value; the port of the server that took it (None: the row was not there)."""
    row = conn.execute(
        sql.SQL("UPDATE {} SET v = %s WHERE id = %s RETURNING inet_server_port() AS port").format(
            sql.Identifier(table)
        ),
        (value, row_id),
    ).fetchone()
    return None if row is None else int(row["port"])


def delete(conn: Connection, table: str, row_id: int) -> int | None:
    """Delete a row; the port of the server that took it (None: the row was not there)."""
    row = conn.execute(
        sql.SQL("DELETE FROM {} WHERE id = %s RETURNING inet_server_port() AS port").format(
            sql.Identifier(table)
        ),
        (row_id,),
    ).fetchone()
    return None if row is None else int(row["port"])


def rows(conn: Connection, table: str) -> dict[int, int]:
    """Every row of a load table: id -> value."""
    query = sql.SQL("SELECT id, v FROM {}").format(sql.Identifier(table))
    return {int(r["id"]): int(r["v"]) for r in conn.execute(query)}


def grant_role(conn: Connection, role: str, member: str) -> None:
    """Make `member` a member of `role`."""
    conn.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(role), sql.Identifier(member)))


def error_code(exc: BaseException) -> str | None:
    """The SQLSTATE of a database error (None for a lost connection or another error)."""
    return getattr(exc, "sqlstate", None) if isinstance(exc, psycopg.Error) else None


DatabaseError = psycopg.Error
