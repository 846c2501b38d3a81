"""pglogical: the extension, nodes, replication sets, subscriptions and their state.

One database holds at most one pglogical node. Cutover makes one where there
is none (`cutover_<move>_source`, `cutover_<move>_target`) and uses the node it
finds otherwise, so a database pglogical already serves keeps its node. The
extension, when cutover creates it, carries a comment naming the move, and only
then is it dropped again; its schema is then usable by PUBLIC, which pglogical
needs of any role that drops a table (see `open_schema`).

Connection strings: the subscription reaches the provider as the move's
replication role, and pglogical's table copy writes through the subscriber
node's own connection string, as the move's role on that side (granted INSERT
and `session_replication_role`, not superuser). Both passwords are generated
here, sent to the servers as SCRAM verifiers and kept only in pglogical's
catalog, where it needs them.
"""

from collections.abc import Sequence
from dataclasses import dataclass

from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from cutover.pg.connect import Connection
from cutover.pg.execute import change
from cutover.pg.queries import load
from cutover.pg.replication import TableSync, with_barrier
from cutover.steps import Change
from cutover.types import TableName, TableState

EXTENSION = "pglogical"
SCHEMA = "pglogical"

# pglogical.local_sync_status.sync_status, per table and for the whole subscription
STATES = {
    "i": TableState.QUEUED,
    "s": TableState.COPYING,  # structure: never asked for, the schema is copied in prepare
    "d": TableState.COPYING,
    "c": TableState.COPYING,
    "w": TableState.CATCHING_UP,
    "u": TableState.CATCHING_UP,
    "y": TableState.READY,
    "r": TableState.READY,
}


def mark(move: str) -> str:
    """The comment on an extension cutover created; nothing else carries it."""
    return f"created by cutover for move {move}; dropped by cutover cleanup"


# -- the extension ----------------------------------------------------------------------------


def extension_installed(conn: Connection) -> bool:
    """Whether the connected database has the extension."""
    row = conn.execute(
        sql.SQL("SELECT 1 FROM pg_catalog.pg_extension WHERE extname = %s"), (EXTENSION,)
    ).fetchone()
    return row is not None


def usable_by(conn: Connection, role: str) -> bool:
    """Whether the extension is installed, its schema usable by all, its catalog by `role`."""
    row = conn.execute(
        sql.SQL(
            "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_extension WHERE extname = %s) "
            "THEN pg_catalog.has_schema_privilege('public', %s, 'USAGE') "
            "AND pg_catalog.has_table_privilege(%s, 'pglogical.node', 'INSERT') "
            "ELSE false END AS ok"
        ),
        (EXTENSION, SCHEMA, role),
    ).fetchone()
    return bool(row and row["ok"])


def extension_available(conn: Connection) -> bool:
    """Whether the server has the extension's files."""
    row = conn.execute(
        sql.SQL("SELECT 1 FROM pg_catalog.pg_available_extensions WHERE name = %s"), (EXTENSION,)
    ).fetchone()
    return row is not None


def extension_ours(conn: Connection, move: str) -> bool:
    """Whether cutover created the extension here for this move."""
    row = conn.execute(
        sql.SQL(
            "SELECT pg_catalog.obj_description(oid, 'pg_extension') = %s AS ours "
            "FROM pg_catalog.pg_extension WHERE extname = %s"
        ),
        (mark(move), EXTENSION),
    ).fetchone()
    return bool(row and row["ours"])


def create_extension(conn: Connection, move: str, *, where: str, dry_run: bool) -> list[Change]:
    """CREATE EXTENSION, marked with the move's comment."""
    if extension_installed(conn):
        return []
    ident = sql.Identifier(EXTENSION)
    return [
        change(conn, sql.SQL("CREATE EXTENSION {}").format(ident), where=where, dry_run=dry_run),
        change(
            conn,
            sql.SQL("COMMENT ON EXTENSION {} IS {}").format(ident, sql.Literal(mark(move))),
            where=where,
            dry_run=dry_run,
        ),
        open_schema(conn, where=where, dry_run=dry_run),
    ]


def open_schema(conn: Connection, *, where: str, dry_run: bool) -> Change:
    """GRANT USAGE ON SCHEMA pglogical TO PUBLIC: what its hooks need of every role.

    pglogical's hooks read its schema whenever a table is dropped in a database
    with a node, as the dropping role: without this, every DROP TABLE of the
    application (and REFRESH MATERIALIZED VIEW CONCURRENTLY, which drops a
    temporary table) fails with "permission denied for schema pglogical".
    USAGE lets no one read its tables.
    """
    statement = sql.SQL("GRANT USAGE ON SCHEMA {} TO PUBLIC").format(sql.Identifier(SCHEMA))
    return change(conn, statement, where=where, dry_run=dry_run)


def drop_extension(conn: Connection, *, where: str, dry_run: bool) -> list[Change]:
    """DROP EXTENSION (cleanup calls it only for an extension carrying the move's mark)."""
    statement = sql.SQL("DROP EXTENSION IF EXISTS {}").format(sql.Identifier(EXTENSION))
    return [change(conn, statement, where=where, dry_run=dry_run)]


# -- nodes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Node:
    """The database's own pglogical node."""

    name: str
    dsn: str

    @property
    def user(self) -> str | None:
        """The role its connection string names."""
        user = conninfo_to_dict(self.dsn).get("user")
        return None if user is None else str(user)

    @property
    def password(self) -> str | None:
        """The password its connection string carries (a secret: never shown)."""
        password = conninfo_to_dict(self.dsn).get("password")
        return None if password is None else str(password)


def local_node(conn: Connection) -> Node | None:
    """The connected database's node, or None (also without the extension)."""
    if not extension_installed(conn):
        return None
    row = conn.execute(load("pglogical_local_node")).fetchone()
    return None if row is None else Node(row["name"], row["dsn"])


def create_node(conn: Connection, name: str, dsn: str, *, where: str, dry_run: bool) -> Change:
    """This database's node; `dsn` is how the server itself reaches it."""
    statement = sql.SQL("SELECT pglogical.create_node(node_name := %s, dsn := %s)")
    return change(conn, statement, (name, dsn), where=where, dry_run=dry_run)


def drop_node(conn: Connection, name: str, *, where: str, dry_run: bool) -> Change:
    """Drop the database's node (its subscriptions and sets are gone by then)."""
    statement = sql.SQL("SELECT pglogical.drop_node(node_name := %s, ifexists := true)")
    return change(conn, statement, (name,), where=where, dry_run=dry_run)


# -- replication sets (provider) --------------------------------------------------------------


def set_exists(conn: Connection, name: str) -> bool:
    """Whether the replication set exists in the connected database."""
    if not extension_installed(conn):
        return False
    row = conn.execute(
        sql.SQL("SELECT 1 FROM pglogical.replication_set WHERE set_name = %s"), (name,)
    ).fetchone()
    return row is not None


# A table into a set; its rows copied by each subscriber, then its changes streamed.
ADD_TABLE = sql.SQL(
    "SELECT pglogical.replication_set_add_table(set_name := %s, relation := %s::regclass, "
    "synchronize_data := true)"
)


def create_set(
    conn: Connection,
    name: str,
    tables: Sequence[tuple[str, str]],
    sequences: list[TableName],
    *,
    where: str,
    dry_run: bool,
) -> list[Change]:
    """A set replicating every change of `tables` and the barrier, and `sequences`, in one
    transaction."""
    changes = [
        change(
            conn,
            sql.SQL("SELECT pglogical.create_replication_set(set_name := %s)"),
            (name,),
            where=where,
            dry_run=dry_run,
        )
    ]
    add_sequence = sql.SQL(
        "SELECT pglogical.replication_set_add_sequence(set_name := %s, relation := %s::regclass, "
        "synchronize_data := false)"
    )
    for statement, relations in ((ADD_TABLE, with_barrier(tables)), (add_sequence, sequences)):
        for schema, rel in relations:
            regclass = sql.Identifier(schema, rel).as_string(conn)
            changes.append(change(conn, statement, (name, regclass), where=where, dry_run=dry_run))
    return changes


def drop_set(conn: Connection, name: str, *, where: str, dry_run: bool) -> list[Change]:
    """Drop the replication set, if there is one."""
    if not set_exists(conn, name):
        return []
    statement = sql.SQL("SELECT pglogical.drop_replication_set(set_name := %s, ifexists := true)")
    return [change(conn, statement, (name,), where=where, dry_run=dry_run)]


# -- subscriptions (subscriber) ---------------------------------------------------------------


@dataclass(frozen=True)
class Subscription:
    """A pglogical subscription as the subscriber sees it."""

    status: str  # replicating, initializing, down, disabled, unknown
    slot: str
    sync: TableState  # the state of its initial copy


def subscription(conn: Connection, name: str) -> Subscription | None:
    """The subscription of that name in the connected database, or None."""
    if not extension_installed(conn):
        return None
    row = conn.execute(load("pglogical_subscription"), (name,)).fetchone()
    if row is None:
        return None
    return Subscription(
        status=row["status"] or "unknown",
        slot=row["slot"],
        sync=STATES.get(row["sync"] or "", TableState.QUEUED),
    )


def create_subscription(
    conn: Connection,
    name: str,
    *,
    provider_dsn: str,
    sets: list[str],
    copy: bool,
    where: str,
    dry_run: bool,
) -> Change:
    """Subscribe to `sets`; with `copy`, pglogical copies every table first. Never the schema."""
    statement = sql.SQL(
        "SELECT pglogical.create_subscription(subscription_name := %s, provider_dsn := %s, "
        "replication_sets := %s, synchronize_structure := false, synchronize_data := %s, "
        "forward_origins := '{}')"
    )
    return change(conn, statement, (name, provider_dsn, sets, copy), where=where, dry_run=dry_run)


def drop_subscription(conn: Connection, name: str, *, where: str, dry_run: bool) -> list[Change]:
    """Drop the subscription; pglogical drops its slot on the provider when it can reach it."""
    statement = sql.SQL(
        "SELECT pglogical.drop_subscription(subscription_name := %s, ifexists := true)"
    )
    return [change(conn, statement, (name,), where=where, dry_run=dry_run)]


def enable_subscription(conn: Connection, name: str, *, where: str, dry_run: bool) -> Change:
    """Enable the subscription now."""
    statement = sql.SQL(
        "SELECT pglogical.alter_subscription_enable(subscription_name := %s, immediate := true)"
    )
    return change(conn, statement, (name,), where=where, dry_run=dry_run)


def disable_subscription(conn: Connection, name: str, *, where: str, dry_run: bool) -> Change:
    """Stop applying: the apply worker ends at once (enable_subscription resumes)."""
    statement = sql.SQL(
        "SELECT pglogical.alter_subscription_disable(subscription_name := %s, immediate := true)"
    )
    return change(conn, statement, (name,), where=where, dry_run=dry_run)


def apply_worker_running(conn: Connection, name: str) -> bool:
    """Whether the subscription's apply worker still runs (on the target).

    The worker names itself `pglogical apply <database oid>:<subscription id>` and
    leaves pglogical's own registry before its session ends: once the session is
    gone, drop_subscription has no worker to wait for (it sleeps a second per look).
    """
    row = conn.execute(
        sql.SQL(
            "SELECT count(*) AS n FROM pg_catalog.pg_stat_activity a "
            "JOIN pglogical.subscription s ON s.sub_name = %s "
            "WHERE a.datname = pg_catalog.current_database() "
            "AND a.application_name = 'pglogical apply ' || (SELECT d.oid FROM "
            "pg_catalog.pg_database d WHERE d.datname = pg_catalog.current_database()) "
            "|| ':' || s.sub_id"
        ),
        (name,),
    ).fetchone()
    return row is not None and int(row["n"]) > 0


def set_tables(conn: Connection, name: str) -> list[TableName]:
    """The tables of the replication set `name` (on the source): what pglogical carries."""
    rows = conn.execute(
        sql.SQL(
            "SELECT n.nspname AS schema, c.relname AS name "
            "FROM pglogical.replication_set_table t "
            "JOIN pglogical.replication_set s ON s.set_id = t.set_id "
            "JOIN pg_catalog.pg_class c ON c.oid = t.set_reloid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE s.set_name = %s ORDER BY 1, 2"
        ),
        (name,),
    ).fetchall()
    return [TableName(r["schema"], r["name"]) for r in rows]


def table_states(conn: Connection, name: str) -> list[TableSync]:
    """Each table's state once the initial copy of the subscription is done."""
    rows = conn.execute(load("pglogical_tables"), (name,)).fetchall()
    return [
        TableSync(r["schema"], r["name"], STATES.get(r["state"], TableState.QUEUED)) for r in rows
    ]


def slot_name(conn: Connection, db: str, provider_node: str, subscription_name: str) -> str:
    """The slot pglogical makes for a subscription, computed as pglogical does it."""
    row = conn.execute(load("pglogical_slot_name"), (db, provider_node, subscription_name))
    name = row.fetchone()
    assert name is not None
    return str(name["slot"])


def grant_copy(
    conn: Connection, role: str, schemas: list[str], *, where: str, dry_run: bool
) -> list[Change]:
    """What pglogical's table copy needs on the subscriber, for the role its node names."""
    ident = sql.Identifier(role)
    statements = [
        sql.SQL("GRANT SET ON PARAMETER session_replication_role TO {}").format(ident),
        sql.SQL(
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_session_setup(text) TO {}"
        ).format(ident),
        sql.SQL(
            "GRANT EXECUTE ON FUNCTION pg_catalog.pg_replication_origin_session_reset() TO {}"
        ).format(ident),
    ]
    for schema in schemas:
        statements += [
            sql.SQL(template).format(sql.Identifier(schema), ident)
            for template in (
                "GRANT USAGE ON SCHEMA {} TO {}",
                "GRANT INSERT ON ALL TABLES IN SCHEMA {} TO {}",
            )
        ]
    return [change(conn, s, where=where, dry_run=dry_run) for s in statements]


def add_tables(
    conn: Connection, name: str, tables: Sequence[TableName], *, where: str, dry_run: bool
) -> list[Change]:
    """Add tables to the move's set; subscribers copy their rows, then stream their changes."""
    return [
        change(
            conn,
            ADD_TABLE,
            (name, sql.Identifier(*t).as_string(conn)),
            where=where,
            dry_run=dry_run,
        )
        for t in tables
    ]


def grant_provider(conn: Connection, role: str, *, where: str, dry_run: bool) -> list[Change]:
    """What a subscriber reads of the provider's pglogical catalog, as the replication role."""
    ident = sql.Identifier(role)
    schema = sql.Identifier(SCHEMA)
    return [
        change(conn, s, where=where, dry_run=dry_run)
        for s in (
            sql.SQL("GRANT USAGE ON SCHEMA {} TO {}").format(schema, ident),
            sql.SQL("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}").format(schema, ident),
        )
    ]


def can_read_catalog(conn: Connection, role: str) -> bool:
    """Whether the role may read the provider's pglogical catalog."""
    if not extension_installed(conn):
        return False
    row = conn.execute(
        sql.SQL(
            "SELECT pg_catalog.has_schema_privilege(%s, %s, 'USAGE') AND "
            "pg_catalog.has_table_privilege(%s, 'pglogical.replication_set', 'SELECT') AS ok"
        ),
        (role, SCHEMA, role),
    ).fetchone()
    return bool(row and row["ok"])


def heartbeat(conn: Connection, move: str) -> None:
    """A small commit on the provider: the initial copy waits for WAL to move on an idle source."""
    conn.execute(load("pglogical_heartbeat"), (f"heartbeat {move}", move))
