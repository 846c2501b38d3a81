"""Running a change, or with dry_run only rendering it, so an operator sees the exact SQL."""

from typing import Any

from psycopg import ClientCursor, sql

from cutover.log import redact
from cutover.pg.connect import Connection
from cutover.steps import Change

Params = tuple[Any, ...] | dict[str, Any] | None
Query = sql.SQL | sql.Composed


def render(conn: Connection, statement: Query, params: Params = None) -> str:
    """The statement as the server would receive it, values inlined, leading comments dropped."""
    lines = ClientCursor(conn).mogrify(statement, params).strip().splitlines()
    while lines and lines[0].lstrip().startswith("--"):
        lines.pop(0)
    return "\n".join(lines)


def change(
    conn: Connection,
    statement: Query,
    params: Params = None,
    *,
    where: str,
    dry_run: bool,
) -> Change:
    """Execute `statement` unless dry_run; either way return what it is."""
    text = render(conn, statement, params)
    if not dry_run:
        conn.execute(statement, params)
    return Change(where=where, action=redact(text))  # a Change is shown and logged
