"""Sequence values, read from the source's real state and set on the target.

Each sequence's own `last_value` and `is_called` are copied, never `max(column)`:
a sequence may be standalone, shared, or ahead of every row that used it.
"""

from psycopg import sql

from cutover.pg.connect import Connection
from cutover.pg.execute import change
from cutover.pg.ident import quote
from cutover.steps import Change
from cutover.types import TableName

Values = dict[str, tuple[int, bool]]  # qualified name -> (last_value, is_called)
Steps = dict[str, int]  # qualified name -> increment


def names(conn: Connection) -> list[TableName]:
    """Every user sequence as (schema, name)."""
    rows = conn.execute(
        sql.SQL(
            "SELECT n.nspname AS schema, c.relname AS name FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'S' "
            "AND n.nspname NOT IN ('pg_catalog', 'information_schema') ORDER BY 1, 2"
        )
    ).fetchall()
    return [TableName(r["schema"], r["name"]) for r in rows]


def read(conn: Connection, sequences: list[TableName]) -> Values:
    """Every sequence's state in one round trip, keyed by its quoted name."""
    if not sequences:
        return {}
    query = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {} AS name, last_value, is_called FROM {}").format(
            sql.Literal(quote(seq)), sql.Identifier(*seq)
        )
        for seq in sequences
    )
    return {r["name"]: (int(r["last_value"]), bool(r["is_called"])) for r in conn.execute(query)}


def write(conn: Connection, values: Values, *, where: str, dry_run: bool) -> list[Change]:
    """Set every sequence in one statement."""
    if not values:
        return []
    statement = sql.SQL(
        "SELECT count(pg_catalog.setval(v.name::regclass, v.last_value, v.is_called)) "
        "FROM unnest(%s::text[], %s::bigint[], %s::bool[]) AS v(name, last_value, is_called)"
    )
    params = (list(values), [v[0] for v in values.values()], [v[1] for v in values.values()])
    return [change(conn, statement, params, where=where, dry_run=dry_run)]


def increments(conn: Connection, sequences: list[TableName]) -> Steps:
    """Each sequence's increment, keyed by its quoted name."""
    rows = conn.execute(
        sql.SQL(
            "SELECT schemaname AS schema, sequencename AS name, increment_by "
            "FROM pg_catalog.pg_sequences"
        )
    ).fetchall()
    wanted = set(sequences)
    return {
        quote((r["schema"], r["name"])): int(r["increment_by"])
        for r in rows
        if (r["schema"], r["name"]) in wanted
    }


def at_or_ahead(target: Values, source: Values, steps: Steps) -> bool:
    """Whether every target sequence would hand out a value at or past the source's next one."""

    def next_value(state: tuple[int, bool], step: int) -> int:
        last_value, is_called = state
        return last_value + step if is_called else last_value

    for name, state in source.items():
        if name not in target:
            return False
        step = steps.get(name, 1)
        if (next_value(target[name], step) - next_value(state, step)) * step < 0:
            return False
    return True
