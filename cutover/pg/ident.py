"""Identifiers quoted the way PostgreSQL reads them, for statements shown to operators."""

from typing import LiteralString

from psycopg import sql

Name = str | tuple[str, ...]  # a name, or a qualified name such as (schema, table)


def quote(name: Name) -> str:
    """A quoted name, doubling inner quotes; a tuple gives a qualified name."""
    parts = name if isinstance(name, tuple) else (name,)
    return sql.Identifier(*parts).as_string()


def statement(template: LiteralString, *names: Name) -> str:
    """A statement with each `{}` filled by a quoted name, e.g. a GRANT to print."""
    idents = [sql.Identifier(*(n if isinstance(n, tuple) else (n,))) for n in names]
    return sql.SQL(template).format(*idents).as_string()
