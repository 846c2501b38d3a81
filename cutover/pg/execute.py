"""Running a change, or with dry_run only rendering it, so an operator sees the exact SQL.

A run sends the server the very text a dry run prints: the statement with its
values inlined here (as `render` shows it), not a template with values bound
apart, so what the operator read is what the server's log shows.
"""

from collections.abc import Sequence
from typing import Any

from psycopg import ClientCursor, sql

from cutover.log import redact
from cutover.pg.connect import Connection
from cutover.steps import Change

Params = tuple[Any, ...] | dict[str, Any] | None
Query = sql.SQL | sql.Composed


def render(conn: Connection, statement: Query, params: Params = None) -> str:
    """The statement as the server would receive it, values inlined, leading comments dropped.

    Without params, a statement's placeholders (`%(next)s`) stay as they are:
    the template of a statement whose values a run learns only as it goes.
    """
    lines = ClientCursor(conn).mogrify(statement, params).strip().splitlines()
    while lines and lines[0].lstrip().startswith("--"):
        lines.pop(0)
    return "\n".join(lines)


def run(conn: Connection, statement: Query, params: Params = None) -> int:
    """Execute exactly what `render` shows; the number of rows it touched."""
    # No parameters go along: the text is sent as it is, a `%` in it included.
    return conn.execute(render(conn, statement, params)).rowcount


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
        conn.execute(text)
    return Change(where=where, action=redact(text))  # a Change is shown and logged


BATCH = 1000  # statements sent in one round trip


def changes(
    conn: Connection, statements: Sequence[Query], *, where: str, dry_run: bool
) -> list[Change]:
    """`change` of each statement, sent a thousand to a round trip (each batch one
    transaction on an autocommit connection): for thousands of small DDL statements."""
    texts = [render(conn, s) for s in statements]
    if not dry_run:
        for start in range(0, len(texts), BATCH):
            conn.execute("; ".join(texts[start : start + BATCH]))
    return [Change(where=where, action=redact(t)) for t in texts]


def each_row(conn: Connection, queries: list[Query]) -> list[dict[str, Any]]:
    """The one row of each query, the queries sent together (a round trip per thousand).

    Each is planned on its own: one UNION of a thousand small queries costs the
    planner far more than a thousand small plans.
    """
    rows: list[dict[str, Any]] = []
    for start in range(0, len(queries), BATCH):
        cur = conn.cursor()
        cur.execute(sql.SQL("; ").join(queries[start : start + BATCH]))
        while True:
            row = cur.fetchone()
            if row is None:
                raise ValueError("each query must return one row")
            rows.append(row)
            if not cur.nextset():
                break
    return rows
