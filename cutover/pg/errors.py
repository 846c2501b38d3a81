"""PostgreSQL's errors as one clear line: where, what ran, what the server said, what to do.

Connections opened by `connect` stamp a failing statement's error with a
`Context` (the server's label, the database, the user and the statement,
secrets masked) and re-raise the same error, so handlers such as
`except psycopg.errors.LockNotAvailable` keep working. `translate` turns any
psycopg error into the `CutoverError` that the runner records and `cli.py`
prints: the SQLSTATE and PostgreSQL's message, the statement, and a hint, the
GRANT to run where the message says which object a privilege is missing on.
"""

import re
from dataclasses import dataclass
from typing import Any, LiteralString

import psycopg
from psycopg import sql
from psycopg.abc import Query

from cutover.errors import ConnectionFailed, CutoverError, Retryable, StepFailed
from cutover.log import MASK, redact
from cutover.pg.ident import quote, statement

MAX_STATEMENT = 300  # characters of the failing statement shown: enough to recognise it
MAX_DETAIL = 200  # PostgreSQL's DETAIL is shown when this short (a long one is in --verbose)
LOCK_RETRY_SECONDS = 2.0
_ATTRIBUTE = "cutover_context"

# A server that went away: the connection classes, and the shutdowns of class 57.
_CONNECTION_LOST = {"57P01", "57P02", "57P03"}

_PASSWORD_LITERAL = re.compile(
    r"(\bPASSWORD\s+)(E'(?:[^'\\]|\\.|'')*'|'(?:[^']|'')*'|\$(\w*)\$.*?\$\3\$)",
    re.IGNORECASE | re.DOTALL,
)
_VERIFIER = re.compile(r"\b(SCRAM-SHA-256\$)[^\s'\"]+|\bmd5[0-9a-f]{32}\b")

# The object kinds of PostgreSQL's aclcheck messages, longest first so that
# "foreign table" is not read as "table" plus a name starting with "table".
_KINDS = (
    "text search configuration",
    "text search dictionary",
    "foreign-data wrapper",
    "materialized view",
    "statistics object",
    "operator family",
    "operator class",
    "foreign server",
    "foreign table",
    "event trigger",
    "large object",
    "access method",
    "subscription",
    "publication",
    "conversion",
    "tablespace",
    "collation",
    "extension",
    "procedure",
    "aggregate",
    "transform",
    "database",
    "function",
    "language",
    "operator",
    "relation",
    "sequence",
    "routine",
    "trigger",
    "schema",
    "domain",
    "policy",
    "column",
    "index",
    "table",
    "type",
    "view",
)
_KIND = "|".join(re.escape(k) for k in _KINDS)
_DENIED = re.compile(rf"permission denied for ({_KIND}) (.+)", re.DOTALL)
_DENIED_COLUMN = re.compile(r'permission denied for column "(.+)" of relation "(.+)"', re.DOTALL)
_NOT_OWNER = re.compile(rf"must be owner of ({_KIND}) (.+)", re.DOTALL)

# What GRANT calls each kind, and the privilege it grants when the statement says no more.
_GRANTABLE: dict[str, tuple[LiteralString, LiteralString]] = {
    "table": ("TABLE", "SELECT"),
    "view": ("TABLE", "SELECT"),
    "materialized view": ("TABLE", "SELECT"),
    "foreign table": ("TABLE", "SELECT"),
    "relation": ("TABLE", "SELECT"),
    "sequence": ("SEQUENCE", "USAGE, SELECT"),
    "schema": ("SCHEMA", "USAGE"),
    "database": ("DATABASE", "CONNECT"),
    "function": ("FUNCTION", "EXECUTE"),
    "procedure": ("PROCEDURE", "EXECUTE"),
    "routine": ("ROUTINE", "EXECUTE"),
    "type": ("TYPE", "USAGE"),
    "domain": ("DOMAIN", "USAGE"),
    "language": ("LANGUAGE", "USAGE"),
    "foreign server": ("FOREIGN SERVER", "USAGE"),
    "foreign-data wrapper": ("FOREIGN DATA WRAPPER", "USAGE"),
    "tablespace": ("TABLESPACE", "CREATE"),
}
# The table privileges a statement needs, by its first word (UPDATE and DELETE read rows too).
_TABLE_PRIVILEGES: dict[str, LiteralString] = {
    "INSERT": "INSERT",
    "UPDATE": "SELECT, UPDATE",
    "DELETE": "SELECT, DELETE",
    "TRUNCATE": "TRUNCATE",
    "MERGE": "SELECT, INSERT, UPDATE, DELETE",
}
_IDENT = r'"(?:[^"]|"")+"|[^\W\d][\w$]*'
_QUALIFIED = re.compile(rf"({_IDENT})\s*\.\s*({_IDENT})")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


@dataclass(frozen=True)
class Context:
    """Where a statement failed: the server's label, database, user, and the statement."""

    label: str
    dbname: str
    user: str
    statement: str | None = None


def mask(text: str) -> str:
    """`log.redact`, and PASSWORD literals and password verifiers in SQL masked too."""
    # Literals first: redact's `password=...` rule would cut a literal that contains one.
    text = redact(_PASSWORD_LITERAL.sub(lambda m: f"{m.group(1)}'{MASK}'", text))
    return _VERIFIER.sub(lambda m: (m.group(1) or "") + MASK, text)


def statement_text(query: Query, conn: psycopg.Connection[Any]) -> str:
    """A query as text, comment lines dropped, values left as placeholders (maybe secrets)."""
    if isinstance(query, bytes):
        text = query.decode(errors="replace")
    elif isinstance(query, sql.Composable):
        try:
            text = query.as_string(conn)
        except psycopg.Error:  # a broken connection cannot quote: quote without it
            text = query.as_string(None)
    else:
        text = str(query)
    lines = [line for line in text.splitlines() if not line.lstrip().startswith("--")]
    return "\n".join(lines).strip()


def remember(
    error: psycopg.Error, conn: psycopg.Connection[Any], query: Query, *, label: str
) -> None:
    """Stamp `error` with the server and statement it came from (the innermost stamp wins)."""
    if context_of(error) is not None:
        return
    try:
        dbname, user = conn.info.dbname, conn.info.user
    except psycopg.Error:  # the connection is closed: say where without it
        dbname, user = "", ""
    attach(error, Context(label, dbname, user, mask(statement_text(query, conn))))


def attach(error: psycopg.Error, context: Context) -> None:
    """Keep `context` on the error, and show it in a traceback too."""
    setattr(error, _ATTRIBUTE, context)
    where = f"{context.label}/{context.dbname}" if context.dbname else context.label
    error.add_note(f"cutover: on {where}: {_shorten(context.statement or '')}")


def context_of(error: BaseException) -> Context | None:
    """The context a connection stamped on `error`, if any."""
    context = getattr(error, _ATTRIBUTE, None)
    return context if isinstance(context, Context) else None


def translate(error: BaseException, *, step: str | None = None) -> CutoverError | None:
    """The CutoverError to show for a database error; None for anything else (a bug)."""
    if not isinstance(error, psycopg.Error):
        return None
    code = error.sqlstate or ""
    if not code and not isinstance(error, psycopg.OperationalError):
        return None  # psycopg refused a call before any server saw it: a bug
    context = context_of(error)
    primary = error.diag.message_primary or _first_line(str(error)) or type(error).__name__
    message = _message(error, context, code=code, primary=primary, step=step)
    where = context.label if context else "the server"
    translated: CutoverError
    # A connection that broke mid-statement raises OperationalError with no SQLSTATE.
    if code.startswith("08") or code in _CONNECTION_LOST or not code:
        translated = ConnectionFailed(
            message,
            hint=f"the connection to {where} was lost (a restart, a failover, or our session "
            "was ended); the command is resumable: run it again and it continues where it "
            "stopped",
        )
    elif code == "55P03":
        translated = Retryable(
            message,
            hint="another session holds a lock this statement waits for; it is tried again. "
            "If it keeps failing, find the holder with pg_catalog.pg_blocking_pids() in "
            "pg_stat_activity, and end it or run again at a quieter moment",
            delay=LOCK_RETRY_SECONDS,
        )
    elif code == "42501":
        translated = StepFailed(message, hint=_privilege_hint(primary, context))
    else:
        translated = StepFailed(
            message,
            hint=f"PostgreSQL reports {condition(code)} ({code or 'no SQLSTATE'}): fix its "
            "cause and run the same command again; it resumes where it stopped",
        )
    translated.__cause__ = error  # the driver's error stays in the chain for --verbose
    return translated


def condition(sqlstate: str) -> str:
    """The name of a SQLSTATE in words ('undefined object'), or of its class."""
    for code in (sqlstate, sqlstate[:2] + "000"):
        try:
            name = psycopg.errors.lookup(code).__name__
        except KeyError:
            continue
        return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", name).lower()
    return "an error"


def _message(
    error: psycopg.Error, context: Context | None, *, code: str, primary: str, step: str | None
) -> str:
    parts = [f"{step}: " if step else ""]
    if context is not None:
        where = f"{context.label}/{context.dbname}" if context.dbname else context.label
        parts.append(f"on {where}" + (f" as {context.user}" if context.user else "") + ": ")
    parts.append(f"{code} {condition(code)}: " if code else "")
    parts.append(primary.strip())
    detail = (error.diag.message_detail or "").strip()
    if detail and len(detail) <= MAX_DETAIL:
        parts.append(f" ({detail})")
    if context is not None and context.statement:
        parts.append(f"; statement: {_shorten(context.statement)}")
    return mask(" ".join("".join(parts).split()))  # one line, whatever the server sent


def _privilege_hint(primary: str, context: Context | None) -> str:
    """The GRANT that lifts a 'permission denied', or whom to run as."""
    role = context.user if context and context.user else None
    who = quote(role) if role else "the plan's user"
    text = context.statement if context and context.statement else ""
    if found := _DENIED_COLUMN.fullmatch(primary):
        column, relation = found.groups()
        privilege = _TABLE_PRIVILEGES.get(_verb(text), "SELECT").split(", ")[-1]
        table = _qualify(relation, text)
        grant = _grant(f"GRANT {privilege} ({{}}) ON TABLE {{}}", role, column, table)
        return f"as the owner of table {quote(table)} (or a superuser), run: {grant}"
    if (found := _DENIED.fullmatch(primary)) and found.group(1) in _GRANTABLE:
        kind, name = found.groups()
        keyword, privileges = _GRANTABLE[kind]
        if keyword == "TABLE":
            privileges = _TABLE_PRIVILEGES.get(_verb(text), privileges)
        elif keyword in ("SCHEMA", "DATABASE") and _verb(text) == "CREATE":
            privileges = "CREATE"
        target = _qualify(name, text)
        grant = _grant(f"GRANT {privileges} ON {keyword} {{}}", role, target)
        return f"as the owner of {kind} {quote(target)} (or a superuser), run: {grant}"
    if found := _NOT_OWNER.fullmatch(primary):
        kind, name = found.groups()
        target = quote(_qualify(name, text))
        return (
            f"only the owner of {kind} {target} may do this: run as its owner, or make {who} "
            f"a member of the owning role: GRANT <owner of {target}> TO {who};"
        )
    return (
        f"{who} lacks a privilege for this: run as the object's owner or a superuser, or "
        f"grant {who} what the message names; `cutover check` lists every GRANT a move needs"
    )


def _grant(template: LiteralString, role: str | None, *names: str | tuple[str, ...]) -> str:
    """A GRANT statement with quoted names, to the role or to a placeholder for it."""
    if role is None:
        return statement(template, *names) + " TO <the plan's user>;"
    return statement(template + " TO {};", *names, role)


def _verb(text: str) -> str:
    """The statement's first keyword, upper-case ('' when unknown)."""
    found = re.match(r"\s*([A-Za-z]+)", text)
    return found.group(1).upper() if found else ""


def _qualify(name: str, text: str) -> str | tuple[str, str]:
    """The schema-qualified name the statement used for `name`, else the bare name.

    PostgreSQL names an object without its schema in these messages; the
    failing statement usually spells it out.
    """
    for found in _QUALIFIED.finditer(text):
        schema, relation = (_unquote(part) for part in found.groups())
        if relation == name:
            return (schema, relation)
    return name


def _unquote(ident: str) -> str:
    # Unquoted names fold to lower case, ASCII letters only, as PostgreSQL folds them.
    if ident.startswith('"'):
        return ident[1:-1].replace('""', '"')
    return ident.translate(_ASCII_LOWER)


def _shorten(text: str) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= MAX_STATEMENT else flat[: MAX_STATEMENT - 1] + "…"


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""
