"""Fencing the source: the application's roles lose LOGIN and their sessions end.

The fence is recorded on the server, in `_cutover.fence` of the move's first
database, before any role loses LOGIN, so a controller that died while the
source was fenced leaves the server able to say exactly which roles to give
LOGIN back. (A mark on the role itself, a role setting, would need a
superuser: PostgreSQL 15 lets no one else set a custom parameter.) The table
is cutover's own and never replicated. Only roles that could log in are
fenced, so lifting it grants nothing new; what the fence needs is CREATEROLE,
and membership in each role (or pg_signal_backend) to end its sessions.

Without `fence.roles` in the plan, the fence covers the roles that may write
to the moved tables, and no superuser: the bootstrap superuser and the DBAs
keep their logins (a superuser that writes aborts the switch all the same).
"""

from collections.abc import Sequence

from psycopg import sql

from cutover.pg.connect import Connection, each
from cutover.pg.execute import change
from cutover.pg.queries import load
from cutover.steps import Change

TABLE = sql.Identifier("_cutover", "fence")
# Roles a managed service needs for itself; fencing them would break the service, not the app.
SERVICE_ROLES = ("cloudsqladmin", "cloudsqlagent", "cloudsqlreplica", "rdsadmin", "rdsrepladmin")


def roles_to_fence(
    conn: Connection, databases: Sequence[Connection], *, named: list[str] | None, keep: list[str]
) -> list[str]:
    """Login roles to fence: the plan's, or those that may write to the moved tables.

    `databases`: a connection to each moved database. By default the fence takes
    LOGIN from the roles that can write their tables (owners, grantees, their
    members), never from a superuser: a DBA keeps the way in, and a superuser who
    writes is caught by the check after the fence.
    """
    kept = [*keep, *SERVICE_ROLES]
    if named is None:
        # Asked of several databases at once (each its own connection): it runs in the pause.
        found = each(
            databases, lambda db: db.execute(load("table_writers"), {"keep": kept}).fetchall()
        )
        return sorted({r["rolname"] for rows in found for r in rows})
    rows = conn.execute(
        sql.SQL(
            "SELECT rolname FROM pg_catalog.pg_roles WHERE rolcanlogin "
            "AND rolname = ANY(%s) AND rolname <> ALL(%s) AND rolname NOT LIKE 'pg\\_%%' "
            # Only a superuser may alter a superuser: a managed service's admin cannot fence
            # one, and the check after the fence finds it if it writes.
            "AND (NOT rolsuper OR (SELECT rolsuper FROM pg_catalog.pg_roles "
            "WHERE rolname = current_user)) ORDER BY rolname"
        ),
        (named, kept),
    ).fetchall()
    return [r["rolname"] for r in rows]


def fenced_roles(conn: Connection, move: str) -> list[str]:
    """The roles this move has fenced (`conn`: the move's first database)."""
    row = conn.execute(sql.SQL("SELECT pg_catalog.to_regclass('_cutover.fence') AS t")).fetchone()
    if row is None or row["t"] is None:
        return []
    rows = conn.execute(
        sql.SQL("SELECT role FROM {} WHERE move = %s ORDER BY role").format(TABLE), (move,)
    ).fetchall()
    return [r["role"] for r in rows]


def fence(
    conn: Connection, roles: list[str], move: str, *, read_only: bool, dry_run: bool
) -> list[Change]:
    """Record, then take LOGIN away from, each role; end their sessions."""
    changes = [
        change(
            conn,
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {} (role text PRIMARY KEY, move text NOT NULL, "
                "fenced_at timestamptz NOT NULL DEFAULT pg_catalog.now())"
            ).format(TABLE),
            where="source",
            dry_run=dry_run,
        ),
        change(
            conn,
            sql.SQL(
                "INSERT INTO {} (role, move) SELECT unnest(%s::text[]), %s ON CONFLICT DO NOTHING"
            ).format(TABLE),
            (roles, move),
            where="source",
            dry_run=dry_run,
        ),
    ]
    for role in roles:
        ident = sql.Identifier(role)
        statements = [sql.SQL("ALTER ROLE {} NOLOGIN").format(ident)]
        if read_only:
            statements.append(
                sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(ident)
            )
        changes += [change(conn, s, where="source", dry_run=dry_run) for s in statements]
    # Not pg_terminate_backend(pid, timeout): it sleeps 100 ms per session before it looks
    # again (600 ms for 6 sessions, measured); the check for sessions still writing polls.
    changes.append(
        change(
            conn,
            sql.SQL(
                "SELECT count(pg_catalog.pg_terminate_backend(pid)) "
                "FROM pg_catalog.pg_stat_activity "
                "WHERE usename = ANY(%s) AND pid <> pg_catalog.pg_backend_pid()"
            ),
            (roles,),
            where="source",
            dry_run=dry_run,
        )
    )
    return changes


def unfence(conn: Connection, move: str, *, dry_run: bool) -> list[Change]:
    """Give LOGIN back to every role this move fenced, then forget the record."""
    changes = []
    roles = fenced_roles(conn, move)
    for role in roles:
        ident = sql.Identifier(role)
        for statement in (
            sql.SQL("ALTER ROLE {} LOGIN").format(ident),
            sql.SQL("ALTER ROLE {} RESET default_transaction_read_only").format(ident),
        ):
            changes.append(change(conn, statement, where="source", dry_run=dry_run))
    if roles:
        changes.append(
            change(
                conn,
                sql.SQL("DELETE FROM {} WHERE move = %s").format(TABLE),
                (move,),
                where="source",
                dry_run=dry_run,
            )
        )
    return changes


def sessions_writing(conn: Connection, *, allowed: list[str], databases: list[str]) -> list[str]:
    """Sessions of other roles in the move's databases that hold a transaction id: writers."""
    rows = conn.execute(
        sql.SQL(
            "SELECT usename, datname, pid FROM pg_catalog.pg_stat_activity "
            "WHERE backend_type = 'client backend' AND backend_xid IS NOT NULL "
            "AND pid <> pg_catalog.pg_backend_pid() AND usename <> ALL(%s) "
            "AND datname = ANY(%s)"
        ),
        (allowed, databases),
    ).fetchall()
    return [f"{r['usename']} in {r['datname']} (pid {r['pid']})" for r in rows]
