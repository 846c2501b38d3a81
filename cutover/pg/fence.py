"""Fencing the source: the application's roles lose LOGIN and their sessions end.

The fence is recorded on each fenced role itself (the role setting
`cutover.fence = <move>`), so a controller that died while the source was
fenced leaves the server able to say exactly which roles to give LOGIN back.
Only roles that could log in are fenced, so lifting it grants nothing new.
"""

from psycopg import sql

from cutover.pg.connect import Connection
from cutover.pg.execute import change
from cutover.steps import Change

MARK = "cutover.fence"
# Roles a managed service needs for itself; fencing them would break the service, not the app.
SERVICE_ROLES = ("cloudsqladmin", "cloudsqlagent", "cloudsqlreplica", "rdsadmin", "rdsrepladmin")


def roles_to_fence(conn: Connection, *, named: list[str] | None, keep: list[str]) -> list[str]:
    """Login roles to fence: the plan's, or every one but `keep` and the service's own."""
    rows = conn.execute(
        sql.SQL(
            "SELECT rolname FROM pg_catalog.pg_roles WHERE rolcanlogin "
            "AND rolname <> ALL(%s) AND rolname NOT LIKE 'pg\\_%%' ORDER BY rolname"
        ),
        ([*keep, *SERVICE_ROLES],),
    ).fetchall()
    candidates = [r["rolname"] for r in rows]
    return candidates if named is None else [r for r in candidates if r in named]


def fenced_roles(conn: Connection, move: str) -> list[str]:
    """The roles this move has fenced."""
    rows = conn.execute(
        sql.SQL(
            "SELECT r.rolname FROM pg_catalog.pg_db_role_setting s "
            "JOIN pg_catalog.pg_roles r ON r.oid = s.setrole "
            "WHERE s.setdatabase = 0 AND %s = ANY(s.setconfig) ORDER BY r.rolname"
        ),
        (f"{MARK}={move}",),
    ).fetchall()
    return [r["rolname"] for r in rows]


def fence(
    conn: Connection, roles: list[str], move: str, *, read_only: bool, dry_run: bool
) -> list[Change]:
    """Mark, then take LOGIN away from, each role; end their sessions."""
    changes = []
    for role in roles:
        ident = sql.Identifier(role)
        statements = [
            sql.SQL("ALTER ROLE {} SET {} = {}").format(
                ident, sql.Identifier(*MARK.split(".")), sql.Literal(move)
            ),
            sql.SQL("ALTER ROLE {} NOLOGIN").format(ident),
        ]
        if read_only:
            statements.append(
                sql.SQL("ALTER ROLE {} SET default_transaction_read_only = on").format(ident)
            )
        changes += [change(conn, s, target="source", dry_run=dry_run) for s in statements]
    changes.append(
        change(
            conn,
            sql.SQL(
                "SELECT count(pg_catalog.pg_terminate_backend(pid)) "
                "FROM pg_catalog.pg_stat_activity "
                "WHERE usename = ANY(%s) AND pid <> pg_catalog.pg_backend_pid()"
            ),
            (roles,),
            target="source",
            dry_run=dry_run,
        )
    )
    return changes


def unfence(conn: Connection, move: str, *, dry_run: bool) -> list[Change]:
    """Give LOGIN back to every role this move fenced, and remove the marks."""
    changes = []
    for role in fenced_roles(conn, move):
        ident = sql.Identifier(role)
        for statement in (
            sql.SQL("ALTER ROLE {} LOGIN").format(ident),
            sql.SQL("ALTER ROLE {} RESET default_transaction_read_only").format(ident),
            sql.SQL("ALTER ROLE {} RESET {}").format(ident, sql.Identifier(*MARK.split("."))),
        ):
            changes.append(change(conn, statement, target="source", dry_run=dry_run))
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
