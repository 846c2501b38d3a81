"""Sequence values, read from the source's real state and set on the target.

Each sequence's own `last_value` and `is_called` are copied, never `max(column)`:
a sequence may be standalone, shared, or ahead of every row that used it.

Reading is one scan of `pg_sequences` (its `last_value` is the sequence's own,
NULL until a value was handed out): a UNION of a thousand sequences costs the
planner half a second, the view 16 ms. Only the sequences it shows no value
for are read one by one, in one round trip.
"""

from typing import NamedTuple

from psycopg import sql

from cutover.pg.connect import Connection
from cutover.pg.execute import change, each_row
from cutover.steps import Change
from cutover.types import TableName


class State(NamedTuple):
    """Where a sequence stands: the value it hands out next follows from these."""

    last_value: int
    is_called: bool
    increment: int

    @property
    def next_value(self) -> int:
        """The value nextval() would return (bounds and cycling aside)."""
        return self.last_value + self.increment if self.is_called else self.last_value


States = dict[str, State]  # qualified name, quoted where it must be -> state

SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")


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


def read(conn: Connection) -> States:
    """Every user sequence's state, keyed by its quoted name: two round trips at most."""
    rows = conn.execute(
        sql.SQL(
            "SELECT format('%%I.%%I', schemaname, sequencename) AS key, schemaname AS schema, "
            "sequencename AS name, last_value, increment_by "
            "FROM pg_catalog.pg_sequences WHERE schemaname <> ALL(%s)"
        ),
        (list(SYSTEM_SCHEMAS),),
    ).fetchall()
    states: States = {}
    unread = []
    for r in rows:
        if r["last_value"] is None:  # never called, or no privilege to see it
            unread.append(r)
        else:
            states[r["key"]] = State(int(r["last_value"]), True, int(r["increment_by"]))
    found = each_row(
        conn,
        [
            sql.SQL("SELECT last_value, is_called FROM {}").format(
                sql.Identifier(r["schema"], r["name"])
            )
            for r in unread
        ],
    )
    for r, row in zip(unread, found, strict=True):
        states[r["key"]] = State(
            int(row["last_value"]), bool(row["is_called"]), int(r["increment_by"])
        )
    return states


def behind(source: States, target: States) -> States:
    """The source's state of every sequence the target would hand out an older value from.

    A sequence missing on the target is behind; one the target has taken further
    (it took writes) is not: setting only these never moves a sequence back.
    """
    late: States = {}
    for name, state in source.items():
        there = target.get(name)
        if there is None or (there.next_value - state.next_value) * state.increment < 0:
            late[name] = state
    return late


def write(conn: Connection, states: States, *, where: str, dry_run: bool) -> list[Change]:
    """Set every sequence in one statement."""
    if not states:
        return []
    statement = sql.SQL(
        "SELECT count(pg_catalog.setval(v.name::regclass, v.last_value, v.is_called)) "
        "FROM unnest(%s::text[], %s::bigint[], %s::bool[]) AS v(name, last_value, is_called)"
    )
    params = (
        list(states),
        [s.last_value for s in states.values()],
        [s.is_called for s in states.values()],
    )
    return [change(conn, statement, params, where=where, dry_run=dry_run)]
