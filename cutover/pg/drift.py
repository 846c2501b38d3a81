"""Schema drift: how the moved tables differ between source and target, and the DDL that mends it.

Logical replication carries rows, not DDL. A column added on the source
stops the target's apply ("missing replicated column"); a changed type may
stop it or silently convert; a table made after start is not carried at all.
`compare` finds these from both catalogs; `mend` gives the statements that
make the target's tables like the source's (a new table comes from pg_dump of
the source, see `create_table`).
"""

import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from psycopg import sql

from cutover.pg import schema
from cutover.pg.connect import Connection
from cutover.pg.ident import quote
from cutover.plan import Server
from cutover.types import TableName

COLUMNS = """
SELECT n.nspname AS schema, c.relname AS name, a.attname AS column,
       pg_catalog.format_type(a.atttypid, a.atttypmod) AS type,
       a.attnotnull AS not_null,
       a.attgenerated <> '' AS generated,
       pg_catalog.pg_get_expr(d.adbin, d.adrelid) AS default,
       CASE WHEN a.atthasmissing
            THEN pg_catalog.array_to_string(a.attmissingval, '') END AS missing
FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
LEFT JOIN pg_catalog.pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))
ORDER BY n.nspname, c.relname, a.attnum
"""


@dataclass(frozen=True)
class Column:
    """A column as its table's catalog has it."""

    name: str
    type: str  # format_type, with its modifier: character varying(20)
    not_null: bool = False
    generated: bool = False
    default: str | None = None  # the expression (for a generated column: its expression)
    missing: str | None = None  # the value rows older than the column read (a fast default)


Columns = Mapping[TableName, Mapping[str, Column]]


class Kind(StrEnum):
    """What differs."""

    TABLE_MISSING = "table missing on the target"
    NOT_REPLICATED = "not replicated"
    COLUMN_MISSING = "column missing on the target"
    COLUMN_TYPE = "column type differs"
    COLUMN_EXTRA = "column only on the target"


@dataclass(frozen=True)
class Drift:
    """One difference of one table."""

    table: TableName
    kind: Kind
    source: Column | None = None
    target: Column | None = None

    def describe(self) -> str:
        """One line for status and errors."""
        name = quote(self.table)
        if self.kind is Kind.TABLE_MISSING:
            return f"{name}: on the source only"
        if self.kind is Kind.NOT_REPLICATED:
            return f"{name}: not replicated (made after start?)"
        if self.kind is Kind.COLUMN_MISSING and self.source:
            return f"{name}: column {quote(self.source.name)} {self.source.type} not on the target"
        if self.kind is Kind.COLUMN_TYPE and self.source and self.target:
            return (
                f"{name}: column {quote(self.source.name)} is {self.source.type} on the source, "
                f"{self.target.type} on the target"
            )
        assert self.target is not None
        return f"{name}: column {quote(self.target.name)} only on the target"


def columns(conn: Connection, tables: Sequence[TableName]) -> dict[TableName, dict[str, Column]]:
    """The columns of each of `tables` that exists on the connected server."""
    rows = conn.execute(
        sql.SQL(COLUMNS),
        ([t.schema for t in tables], [t.name for t in tables]),
    ).fetchall()
    found: dict[TableName, dict[str, Column]] = {}
    for r in rows:
        found.setdefault(TableName(r["schema"], r["name"]), {})[r["column"]] = Column(
            r["column"], r["type"], r["not_null"], r["generated"], r["default"], r["missing"]
        )
    return found


def compare(
    tables: Sequence[TableName],
    source: Columns,
    target: Columns,
    *,
    carried: set[TableName] | None = None,
) -> list[Drift]:
    """Every difference of `tables` between the two catalogs, table by table, in order.

    `carried`: the tables the replication carries (None: not known); a table
    that exists on both sides but is not carried is NOT_REPLICATED.
    """
    found: list[Drift] = []
    for table in tables:
        theirs = target.get(table)
        if theirs is None:
            found.append(Drift(table, Kind.TABLE_MISSING))
            continue
        ours = source.get(table, {})
        for name, column in ours.items():
            other = theirs.get(name)
            if other is None:
                found.append(Drift(table, Kind.COLUMN_MISSING, source=column))
            elif other.type != column.type:
                found.append(Drift(table, Kind.COLUMN_TYPE, source=column, target=other))
        found += [
            Drift(table, Kind.COLUMN_EXTRA, target=column)
            for name, column in theirs.items()
            if name not in ours
        ]
        if carried is not None and table not in carried:
            found.append(Drift(table, Kind.NOT_REPLICATED))
    return found


def mend(drift: Drift) -> list[sql.Composed]:
    """The statements that make the target's table like the source's, for one column.

    A new column gets, for the rows the target has, the value those rows read
    on the source (its fast default), then the source's default for new rows;
    where no such rule gives them (`needs_values`), `fill_column` copies them,
    and `not_null` follows. A table missing on the target is `create_table`'s;
    NOT_REPLICATED is the engine's.
    """
    table = sql.Identifier(*drift.table)
    alter = sql.SQL("ALTER TABLE ONLY {} ").format(table)
    if drift.kind is Kind.COLUMN_MISSING and drift.source:
        column = drift.source
        ident = sql.Identifier(column.name)
        kind = sql.SQL(column.type)  # format_type's text: quoted where a name needs it
        if column.generated and column.default:
            return [
                alter
                + sql.SQL("ADD COLUMN {} {} GENERATED ALWAYS AS ({}) STORED").format(
                    ident, kind, sql.SQL(column.default)
                )
            ]
        add = sql.SQL("ADD COLUMN {} {}").format(ident, kind)
        if column.missing is not None:
            add += sql.SQL(" DEFAULT {}::{}").format(sql.Literal(column.missing), kind)
        if column.not_null and not needs_values(drift):  # else once the values are there
            add += sql.SQL(" NOT NULL")
        statements = [alter + add]
        if column.default is not None:
            statements.append(
                alter
                + sql.SQL("ALTER COLUMN {} SET DEFAULT {}").format(ident, sql.SQL(column.default))
            )
        elif column.missing is not None:
            statements.append(alter + sql.SQL("ALTER COLUMN {} DROP DEFAULT").format(ident))
        return statements
    if drift.kind is Kind.COLUMN_TYPE and drift.source:
        ident = sql.Identifier(drift.source.name)
        kind = sql.SQL(drift.source.type)
        return [
            alter + sql.SQL("ALTER COLUMN {} TYPE {} USING {}::{}").format(ident, kind, ident, kind)
        ]
    if drift.kind is Kind.COLUMN_EXTRA and drift.target:
        return [alter + sql.SQL("DROP COLUMN {}").format(sql.Identifier(drift.target.name))]
    return []


def create_table(source: Server, target: Server, db: str, table: TableName) -> None:
    """Make the table on the target as pg_dump of the source defines it: keys, indexes,
    grants, all or nothing (a custom archive through pg_restore, as the first schema copy)."""
    with tempfile.TemporaryDirectory(prefix="cutover-table-") as folder:
        archive = Path(folder) / "table.dump"
        schema.dump(source, db, archive, table=table)
        schema.restore(target, db, archive, what=f"pg_restore of {quote(table)}")


def needs_values(drift: Drift) -> bool:
    """A new column whose existing rows may hold values on the source that no rule gives:
    a NOT NULL or defaulted column added by a rewrite, or rewritten since (no fast default)."""
    column = drift.source
    return (
        drift.kind is Kind.COLUMN_MISSING
        and column is not None
        and not column.generated
        and column.missing is None
        and (column.not_null or column.default is not None)
    )


def fill_column(
    source: Connection, target: Connection, table: TableName, column: str, key: Sequence[str]
) -> int:
    """Give the target's rows the source's values of a column just added there, by key.

    Only rows still NULL are set: a row that replication applied since carries
    its value already, newer than what was read here. Returns the rows set.
    """
    keys = [sql.Identifier(k) for k in key]
    picked = sql.SQL(", ").join([*keys, sql.Identifier(column)])
    fill = sql.Identifier("_cutover_fill")
    target.execute(
        sql.SQL(
            "CREATE TEMPORARY TABLE {} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA"
        ).format(fill, picked, sql.Identifier(*table))
    )
    with (
        source.cursor().copy(
            sql.SQL("COPY (SELECT {} FROM {}) TO STDOUT (FORMAT binary)").format(
                picked, sql.Identifier(*table)
            )
        ) as reading,
        target.cursor().copy(sql.SQL("COPY {} FROM STDIN (FORMAT binary)").format(fill)) as writing,
    ):
        for block in reading:
            writing.write(block)
    matched = sql.SQL(" AND ").join(sql.SQL("t.{} = f.{}").format(k, k) for k in keys)
    done = target.execute(
        sql.SQL("UPDATE {} AS t SET {} = f.{} FROM {} AS f WHERE {} AND t.{} IS NULL").format(
            sql.Identifier(*table),
            sql.Identifier(column),
            sql.Identifier(column),
            fill,
            matched,
            sql.Identifier(column),
        )
    )
    return done.rowcount


def not_null(drift: Drift) -> sql.Composed:
    """SET NOT NULL on a column `fill_column` gave its values."""
    assert drift.source is not None
    return sql.SQL("ALTER TABLE ONLY {} ALTER COLUMN {} SET NOT NULL").format(
        sql.Identifier(*drift.table), sql.Identifier(drift.source.name)
    )
