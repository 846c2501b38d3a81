"""The DDL guard: event triggers on the source that refuse schema changes while a move runs.

A schema change on the source during a move breaks its logical replication: the
target's apply worker stops at the first row with a column it lacks, a new table
is never carried. With `ddl_guard: true` in the plan, prepare creates in each
database of the move a function `_cutover.cutover_<move>_ddl_guard()` and two
event triggers that call it, `cutover_<move>_ddl_guard` (ddl_command_end) and
`cutover_<move>_ddl_guard_drop` (sql_drop); an error raised there rolls the
command back. Temporary objects, GRANT, REVOKE, COMMENT and REFRESH
MATERIALIZED VIEW pass, and so do cutover's own sessions (the plan's source
user and the move's role); reading and writing rows never fires an event
trigger. Only a superuser (on Cloud SQL, a member of cloudsqlsuperuser) may
create an event trigger. Event triggers belong to the database, in no schema:
cleanup drops them by name, before the `_cutover` schema goes.
"""

from collections.abc import Sequence
from typing import LiteralString

import psycopg
from psycopg import sql

from cutover.errors import PreconditionFailed
from cutover.pg import barrier, catalog
from cutover.pg.connect import Connection
from cutover.pg.execute import Query, change
from cutover.pg.queries import load
from cutover.pg.replication import object_name
from cutover.steps import Change

_TAG = "$guard$"  # the function body's dollar quote (ddl_guard_function.sql)

HINT = (
    "temporary tables, GRANT, REVOKE, COMMENT, REFRESH MATERIALIZED VIEW and every read and "
    "write of rows still work; make the schema change after the move (switch, then cleanup), "
    'or see "DDL is refused" in cutover\'s docs/troubleshooting.md'
)
PRIVILEGE_HINT = (
    "an event trigger needs a superuser (on Cloud SQL, a member of cloudsqlsuperuser): make the "
    "plan's source user one for the whole move (the guard lets that user's sessions through, "
    "and cleanup drops the guard as that user), or set ddl_guard: false to move without it"
)


def name(move: str) -> str:
    """The guard's function, and its ddl_command_end trigger: `cutover_<move>_ddl_guard`."""
    return f"{object_name(move)}_ddl_guard"


def triggers(move: str) -> dict[str, LiteralString]:
    """The guard's event triggers by name, each with the event it fires at."""
    base = name(move)
    return {base: "ddl_command_end", f"{base}_drop": "sql_drop"}


def message(move: str) -> str:
    """What a refused command's error says."""
    return (
        f"cutover move {move} is running: DDL is refused on this database until it ends "
        "(cutover cleanup removes this guard)"
    )


def _function(move: str) -> sql.Identifier:
    return sql.Identifier(barrier.SCHEMA, name(move))


def present_triggers(conn: Connection, move: str) -> list[str]:
    """The guard's event triggers that exist in the connected database."""
    rows = conn.execute(
        sql.SQL(
            "SELECT evtname FROM pg_catalog.pg_event_trigger WHERE evtname = ANY(%s) "
            "ORDER BY evtname"
        ),
        (list(triggers(move)),),
    ).fetchall()
    return [r["evtname"] for r in rows]


def function_exists(conn: Connection, move: str) -> bool:
    """Whether the guard's function exists in the `_cutover` schema."""
    row = conn.execute(
        sql.SQL(
            "SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n "
            "ON n.oid = p.pronamespace WHERE n.nspname = %s AND p.proname = %s"
        ),
        (barrier.SCHEMA, name(move)),
    ).fetchone()
    return row is not None


def exists(conn: Connection, move: str) -> bool:
    """Whether the whole guard is in the connected database: its function and both triggers."""
    return len(present_triggers(conn, move)) == len(triggers(move)) and function_exists(conn, move)


def any_left(conn: Connection, move: str) -> bool:
    """Whether any part of the guard is in the connected database."""
    return bool(present_triggers(conn, move)) or function_exists(conn, move)


def create(
    conn: Connection, move: str, *, allowed: Sequence[str], where: str, dry_run: bool
) -> list[Change]:
    """The guard's function and its missing triggers, in one transaction.

    `allowed`: the roles whose sessions (session_user) may still change the
    schema, cutover's own. Without the right to create an event trigger, nothing
    is created and PreconditionFailed says what to do.
    """
    if any(_TAG in role for role in allowed):  # it would end the function's body early
        raise PreconditionFailed(
            f"a role name holds {_TAG}, which the guard's function cannot quote",
            hint="rename the role, or set ddl_guard: false",
        )
    function = load("ddl_guard_function").format(
        function=_function(move),
        allowed=sql.SQL("ARRAY[{}]").format(sql.SQL(", ").join(map(sql.Literal, allowed))),
        message=sql.Literal(message(move)),
        hint=sql.Literal(HINT),
    )
    present = present_triggers(conn, move)
    statements: list[Query] = [function]
    statements += [
        sql.SQL("CREATE EVENT TRIGGER {} ON {} EXECUTE FUNCTION {}()").format(
            sql.Identifier(trigger), sql.SQL(event), _function(move)
        )
        for trigger, event in triggers(move).items()
        if trigger not in present
    ]
    if dry_run:
        return [change(conn, s, where=where, dry_run=True) for s in statements]
    if not catalog.may_create_event_triggers(conn):
        raise PreconditionFailed(
            f"{catalog.current_role(conn).name} may not create event triggers, which "
            "ddl_guard: true needs",
            hint=PRIVILEGE_HINT,
        )
    try:
        # One transaction: a trigger refused leaves no function behind either.
        with conn.transaction():
            return [change(conn, s, where=where, dry_run=False) for s in statements]
    except psycopg.errors.InsufficientPrivilege as exc:
        raise PreconditionFailed(
            f"{catalog.current_role(conn).name} may not create event triggers, which "
            f"ddl_guard: true needs (the server said: {exc.diag.message_primary or exc})",
            hint=PRIVILEGE_HINT,
        ) from None


def drop(conn: Connection, move: str, *, where: str, dry_run: bool) -> list[Change]:
    """The guard's triggers, then its function: whichever of them exist."""
    statements: list[Query] = [
        sql.SQL("DROP EVENT TRIGGER IF EXISTS {}").format(sql.Identifier(trigger))
        for trigger in present_triggers(conn, move)
    ]
    if function_exists(conn, move):
        statements.append(sql.SQL("DROP FUNCTION IF EXISTS {}()").format(_function(move)))
    return [change(conn, s, where=where, dry_run=dry_run) for s in statements]
