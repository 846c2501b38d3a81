"""Read-only questions to the catalogs: settings, roles, relations, keys, extensions."""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg import sql

from cutover.pg.connect import Connection
from cutover.pg.execute import Query, change, each_row
from cutover.pg.ident import quote
from cutover.pg.queries import load
from cutover.steps import Change
from cutover.types import TableName


@dataclass(frozen=True)
class Relation:
    """A table, sequence, foreign table or materialized view, with what we may do to it."""

    schema: str
    name: str
    kind: str  # pg_class.relkind: r, p, S, f, m
    persistence: str  # p permanent, u unlogged
    replica_identity: str  # d default, n nothing, f full, i index
    owner: str
    has_primary_key: bool
    has_identity_index: bool
    schema_usage: bool
    can_select: bool
    acts_as_owner: bool

    @property
    def display(self) -> str:
        """The qualified name as SQL would spell it."""
        return quote((self.schema, self.name))

    @property
    def is_table(self) -> bool:
        """An ordinary table (partitions included): what logical replication carries."""
        return self.kind == "r"

    @property
    def has_usable_identity(self) -> bool:
        """Whether UPDATE and DELETE can be replicated without scanning the whole table."""
        if self.replica_identity == "d":
            return self.has_primary_key
        return self.replica_identity == "i" and self.has_identity_index


@dataclass(frozen=True)
class ForeignKey:
    """A foreign key from child columns to parent columns."""

    name: str
    child_schema: str
    child_table: str
    parent_schema: str
    parent_table: str
    child_columns: tuple[str, ...]
    parent_columns: tuple[str, ...]

    @property
    def display(self) -> str:
        """`schema.child(cols) -> schema.parent(cols)`."""
        child = quote((self.child_schema, self.child_table))
        parent = quote((self.parent_schema, self.parent_table))
        child_columns = ", ".join(quote(c) for c in self.child_columns)
        parent_columns = ", ".join(quote(c) for c in self.parent_columns)
        return f"{child}({child_columns}) -> {parent}({parent_columns})"


@dataclass(frozen=True)
class Role:
    """The attributes of the connected role that a move cares about."""

    name: str
    superuser: bool
    replication: bool
    createdb: bool
    createrole: bool = False


def server_version(conn: Connection) -> int:
    """server_version_num, e.g. 150018."""
    return int(_value(conn, sql.SQL("SELECT pg_catalog.current_setting('server_version_num')")))


def settings(conn: Connection, names: list[str]) -> dict[str, str]:
    """The current value of each named setting that exists."""
    rows = conn.execute(
        sql.SQL("SELECT name, setting FROM pg_catalog.pg_settings WHERE name = ANY(%s)"), (names,)
    ).fetchall()
    return {r["name"]: r["setting"] for r in rows}


@dataclass(frozen=True)
class ConnectionUse:
    """A server's client connections: its limit, the slots kept for superusers, and the
    sessions of everyone but this controller."""

    limit: int  # max_connections
    reserved: int  # superuser_reserved_connections, and reserved_connections (16+)
    others: int

    @property
    def free(self) -> int:
        """Slots an ordinary role may still take."""
        return max(0, self.limit - self.reserved - self.others)


def connection_use(conn: Connection, *, ours: str) -> ConnectionUse:
    """What the server's connections look like now; sessions named `ours` (application_name)
    are this controller's.

    A role without pg_read_all_stats sees no backend_type of other roles' sessions: those
    with a role count as clients (WAL senders and background workers among them, which
    makes the count high, never low).
    """
    reserved = ["superuser_reserved_connections", "reserved_connections"]  # the second: 16+
    values = settings(conn, ["max_connections", *reserved])
    others = _value(
        conn,
        sql.SQL(
            "SELECT count(*) FROM pg_catalog.pg_stat_activity"
            " WHERE (backend_type = 'client backend'"
            "        OR (backend_type IS NULL AND usesysid IS NOT NULL))"
            "   AND application_name IS DISTINCT FROM %s"
        ),
        (ours,),
    )
    return ConnectionUse(
        int(values["max_connections"]),
        sum(int(values[name]) for name in reserved if name in values),
        int(others),
    )


def logical_workers(conn: Connection) -> tuple[int, int]:
    """(the server's max_logical_replication_workers, the subscriptions' workers running now)."""
    limit = settings(conn, ["max_logical_replication_workers"])["max_logical_replication_workers"]
    running = _value(
        conn,
        sql.SQL("SELECT count(*) FROM pg_catalog.pg_stat_subscription WHERE pid IS NOT NULL"),
    )
    return int(limit), int(running)


def enabled_subscriptions(conn: Connection, *, excluding: Sequence[str]) -> int:
    """Subscriptions of the server (every database) that are enabled, each with an apply
    worker, but those named in `excluding`."""
    return int(
        _value(
            conn,
            sql.SQL(
                "SELECT count(*) FROM pg_catalog.pg_subscription"
                " WHERE subenabled AND subname <> ALL(%s)"
            ),
            (list(excluding),),
        )
    )


def connectable_databases(conn: Connection) -> int:
    """How many databases of the server accept connections (pglogical runs a worker in each)."""
    return int(
        _value(conn, sql.SQL("SELECT count(*) FROM pg_catalog.pg_database WHERE datallowconn"))
    )


def database_names(conn: Connection) -> list[str]:
    """Every database of the server that accepts connections, the templates left out."""
    rows = conn.execute(
        sql.SQL(
            "SELECT datname FROM pg_catalog.pg_database "
            "WHERE datallowconn AND NOT datistemplate ORDER BY datname"
        )
    ).fetchall()
    return [r["datname"] for r in rows]


def current_role(conn: Connection) -> Role:
    """The connected role's attributes."""
    row = conn.execute(
        sql.SQL(
            "SELECT rolname, rolsuper, rolreplication, rolcreatedb, rolcreaterole "
            "FROM pg_catalog.pg_roles WHERE rolname = current_user"
        )
    ).fetchone()
    assert row is not None  # the connected role always exists
    return Role(
        row["rolname"],
        row["rolsuper"],
        row["rolreplication"],
        row["rolcreatedb"],
        row["rolcreaterole"],
    )


def may_create_replication_roles(conn: Connection) -> bool:
    """Whether the connected role may create a role with REPLICATION.

    A superuser may; so may Cloud SQL's admin users (cloudsqlsuperuser); from
    PostgreSQL 16 a CREATEROLE role that has REPLICATION itself. On PostgreSQL 15
    any other role may not (and may not alter a replication role either).
    """
    role = current_role(conn)
    if role.superuser or is_member_of(conn, "cloudsqlsuperuser"):
        return True
    return server_version(conn) >= 160000 and role.createrole and role.replication


def may_create_event_triggers(conn: Connection) -> bool:
    """Whether the connected role may try to create an event trigger (the DDL guard's).

    PostgreSQL lets only a superuser; Cloud SQL lets its admin users
    (cloudsqlsuperuser) where the service allows event triggers at all.
    """
    return current_role(conn).superuser or is_member_of(conn, "cloudsqlsuperuser")


def is_member_of(conn: Connection, role: str) -> bool:
    """Whether the current user is a member of `role` (False if it does not exist)."""
    return bool(
        _value(
            conn,
            sql.SQL(
                "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s) "
                "AND pg_catalog.pg_has_role(current_user, %s, 'MEMBER')"
            ),
            (role, role),
        )
    )


def database_privileges(conn: Connection) -> dict[str, bool]:
    """CONNECT, CREATE and TEMP on the current database."""
    row = conn.execute(
        sql.SQL(
            "SELECT pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CONNECT')"
            " AS connect,"
            " pg_catalog.has_database_privilege(pg_catalog.current_database(), 'CREATE')"
            " AS create"
        )
    ).fetchone()
    assert row is not None
    return {"CONNECT": row["connect"], "CREATE": row["create"]}


def existing_databases(conn: Connection, names: list[str]) -> set[str]:
    """Which of `names` exist on this server."""
    rows = conn.execute(
        sql.SQL("SELECT datname FROM pg_catalog.pg_database WHERE datname = ANY(%s)"), (names,)
    ).fetchall()
    return {r["datname"] for r in rows}


def replication_in_use(conn: Connection, *, excluding: str | None = None) -> tuple[int, int]:
    """(replication slots that exist, WAL senders running), leaving out a move's own if named."""
    row = conn.execute(
        sql.SQL(
            "SELECT (SELECT count(*) FROM pg_catalog.pg_replication_slots "
            "        WHERE %(prefix)s::text IS NULL"
            "           OR NOT starts_with(slot_name, %(prefix)s)) AS slots,"
            " (SELECT count(*) FROM pg_catalog.pg_stat_replication "
            "        WHERE %(app)s::text IS NULL"
            "           OR NOT starts_with(application_name, %(app)s)) AS senders"
        ),
        {"prefix": excluding, "app": excluding.rstrip("_") if excluding else None},
    ).fetchone()
    assert row is not None
    return int(row["slots"]), int(row["senders"])


@dataclass(frozen=True)
class SlotHealth:
    """One slot's WAL retention as the source sees it."""

    name: str
    wal_status: str
    retained_bytes: int
    safe_wal_size: int | None


def move_slots(conn: Connection, *, prefix: str) -> list[SlotHealth]:
    """The slots whose name starts with `prefix`."""
    rows = conn.execute(
        sql.SQL(
            "SELECT slot_name, coalesce(wal_status, 'unknown') AS wal_status, "
            "coalesce(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), restart_lsn), 0)"
            " AS retained, safe_wal_size FROM pg_catalog.pg_replication_slots "
            "WHERE starts_with(slot_name, %s) ORDER BY slot_name"
        ),
        (prefix,),
    ).fetchall()
    return [
        SlotHealth(
            r["slot_name"],
            r["wal_status"],
            int(r["retained"]),
            None if r["safe_wal_size"] is None else int(r["safe_wal_size"]),
        )
        for r in rows
    ]


def relations(conn: Connection) -> list[Relation]:
    """Every user relation of the current database."""
    return [Relation(**row) for row in conn.execute(load("user_relations")).fetchall()]


def foreign_keys(conn: Connection) -> list[ForeignKey]:
    """Every foreign key between user tables."""
    rows = conn.execute(load("foreign_keys")).fetchall()
    return [
        ForeignKey(
            **{k: v for k, v in r.items() if not k.endswith("_columns")},
            child_columns=tuple(r["child_columns"]),
            parent_columns=tuple(r["parent_columns"]),
        )
        for r in rows
    ]


def orphan_query(fk: ForeignKey, *, count: bool) -> sql.Composed:
    """Rows of the child whose key points at no parent row (MATCH SIMPLE: all columns set)."""
    not_null = sql.SQL(" AND ").join(
        sql.SQL("c.{} IS NOT NULL").format(sql.Identifier(col)) for col in fk.child_columns
    )
    matches = sql.SQL(" AND ").join(
        sql.SQL("p.{} = c.{}").format(sql.Identifier(parent), sql.Identifier(child))
        for child, parent in zip(fk.child_columns, fk.parent_columns, strict=True)
    )
    select = sql.SQL("count(*) AS n") if count else sql.SQL("c.*")
    return sql.SQL(
        "SELECT {select} FROM {child} AS c WHERE {not_null} AND NOT EXISTS "
        "(SELECT 1 FROM {parent} AS p WHERE {matches})"
    ).format(
        select=select,
        child=sql.Identifier(fk.child_schema, fk.child_table),
        not_null=not_null,
        parent=sql.Identifier(fk.parent_schema, fk.parent_table),
        matches=matches,
    )


def orphan_listing(fk: ForeignKey) -> str:
    """The query an operator runs to see the orphan rows."""
    return orphan_query(fk, count=False).as_string() + ";"


def count_orphans(conn: Connection, fk: ForeignKey) -> int:
    """How many child rows point at nothing."""
    return int(_value(conn, orphan_query(fk, count=True)))


@dataclass(frozen=True)
class ForeignTable:
    """A foreign table and the foreign server it reads through."""

    schema: str
    name: str
    server: str
    wrapper: str  # the foreign data wrapper, e.g. postgres_fdw
    user_mappings: int  # of its server

    @property
    def display(self) -> str:
        """The qualified name as SQL would spell it."""
        return quote((self.schema, self.name))


def foreign_tables(conn: Connection) -> list[ForeignTable]:
    """Every foreign table of the current database, by server."""
    return [ForeignTable(**row) for row in conn.execute(load("foreign_tables")).fetchall()]


def event_triggers(conn: Connection) -> list[tuple[str, str]]:
    """Enabled event triggers: (name, event)."""
    rows = conn.execute(
        sql.SQL(
            "SELECT evtname, evtevent FROM pg_catalog.pg_event_trigger "
            "WHERE evtenabled <> 'D' ORDER BY evtname"
        )
    ).fetchall()
    return [(r["evtname"], r["evtevent"]) for r in rows]


def installed_extensions(conn: Connection) -> dict[str, str]:
    """Extensions installed in the current database: name -> version (plpgsql aside)."""
    rows = conn.execute(
        sql.SQL(
            "SELECT extname, extversion FROM pg_catalog.pg_extension WHERE extname <> 'plpgsql'"
        )
    ).fetchall()
    return {r["extname"]: r["extversion"] for r in rows}


def available_extensions(conn: Connection) -> set[str]:
    """Extensions this server could install."""
    rows = conn.execute(sql.SQL("SELECT name FROM pg_catalog.pg_available_extensions")).fetchall()
    return {r["name"] for r in rows}


def _value(conn: Connection, query: Query, params: Any = None) -> Any:
    row = conn.execute(query, params).fetchone()
    assert row is not None
    return next(iter(row.values()))


def missing_tables(conn: Connection, tables: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """Which of the (schema, name) tables do not exist in the connected database.

    The answer holds TableNames, typed as pairs for callers that still declare pairs.
    """
    rows = conn.execute(
        sql.SQL(
            "SELECT t.schema, t.name FROM unnest(%s::text[], %s::text[]) "
            "AS t(schema, name) WHERE pg_catalog.to_regclass("
            "pg_catalog.quote_ident(t.schema) || '.' || pg_catalog.quote_ident(t.name)) IS NULL"
        ),
        ([t[0] for t in tables], [t[1] for t in tables]),
    ).fetchall()
    return [TableName(r["schema"], r["name"]) for r in rows]


def subscription_errors(conn: Connection, subscription: str) -> int:
    """Apply and table-copy errors the subscription's workers have hit (PostgreSQL 15+)."""
    row = conn.execute(
        sql.SQL(
            "SELECT coalesce(sum(apply_error_count + sync_error_count), 0) AS n "
            "FROM pg_catalog.pg_stat_subscription_stats WHERE subname = %s"
        ),
        (subscription,),
    ).fetchone()
    return int(row["n"]) if row else 0


def alter_system(conn: Connection, name: str, value: str, *, where: str, dry_run: bool) -> Change:
    """ALTER SYSTEM SET a parameter (takes effect on reload or restart)."""
    statement = sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
    return change(conn, statement, where=where, dry_run=dry_run)


def exact_counts(conn: Connection, tables: Sequence[tuple[str, str]]) -> dict[TableName, int]:
    """count(*) of every table, the statements sent together (each planned on its own)."""
    rows = each_row(
        conn,
        [
            sql.SQL("SELECT count(*) AS n FROM {}").format(sql.Identifier(schema, name))
            for schema, name in tables
        ],
    )
    return {TableName(*t): int(r["n"]) for t, r in zip(tables, rows, strict=True)}


def tables_with_rows(conn: Connection, tables: Sequence[tuple[str, str]]) -> list[TableName]:
    """The tables that hold at least one row, in one statement."""
    if not tables:
        return []
    query = sql.SQL(" UNION ALL ").join(
        sql.SQL("SELECT {} AS schema, {} AS name WHERE EXISTS (SELECT 1 FROM ONLY {})").format(
            sql.Literal(schema), sql.Literal(name), sql.Identifier(schema, name)
        )
        for schema, name in tables
    )
    return [TableName(r["schema"], r["name"]) for r in conn.execute(query)]


def estimated_rows(conn: Connection) -> int:
    """The user's rows as the statistics count them, plus those a running COPY has written.

    An estimate that costs no scan: what a scrape can afford on a large database.
    """
    return int(_value(conn, load("estimated_rows")) or 0)


@dataclass(frozen=True)
class OpenTransaction:
    """A session's transaction that holds a transaction id (what a new logical slot waits for)."""

    pid: int
    user: str | None
    database: str | None
    application: str | None
    state: str | None
    seconds: float | None

    def describe(self) -> str:
        """`pid 123 (user app, database shop, 'psql', idle in transaction, open 65 s)`."""
        known = [
            f"user {self.user}" if self.user else None,
            f"database {self.database}" if self.database else None,
            f"'{self.application}'" if self.application else None,
            self.state,
            f"open {self.seconds:.0f} s" if self.seconds is not None else None,
        ]
        return f"pid {self.pid} ({', '.join(k for k in known if k)})"


def transactions_older_than(conn: Connection, backend: int) -> list[OpenTransaction]:
    """The transactions holding an id that began before the session `backend`, oldest first."""
    rows = conn.execute(
        sql.SQL(
            "SELECT a.pid, a.usename AS user, a.datname AS database, "
            "a.application_name AS application, a.state, "
            "extract(epoch FROM pg_catalog.clock_timestamp() - a.xact_start)::float8 AS seconds "
            "FROM pg_catalog.pg_stat_activity a "
            "JOIN pg_catalog.pg_stat_activity w ON w.pid = %s "
            "WHERE a.backend_xid IS NOT NULL AND a.pid <> w.pid "
            "AND a.xact_start < w.backend_start ORDER BY a.xact_start"
        ),
        (backend,),
    ).fetchall()
    return [OpenTransaction(**r) for r in rows]


def foreign_key_references(conn: Connection) -> set[tuple[TableName, TableName]]:
    """(table, referenced table) for each foreign key of the connected database."""
    rows = conn.execute(
        sql.SQL(
            "SELECT n.nspname AS schema, r.relname AS name, "
            "fn.nspname AS ref_schema, fr.relname AS ref_name "
            "FROM pg_catalog.pg_constraint c "
            "JOIN pg_catalog.pg_class r ON r.oid = c.conrelid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = r.relnamespace "
            "JOIN pg_catalog.pg_class fr ON fr.oid = c.confrelid "
            "JOIN pg_catalog.pg_namespace fn ON fn.oid = fr.relnamespace "
            "WHERE c.contype = 'f'"
        )
    ).fetchall()
    return {
        (TableName(r["schema"], r["name"]), TableName(r["ref_schema"], r["ref_name"])) for r in rows
    }
