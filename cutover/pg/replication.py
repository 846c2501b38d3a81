"""Native logical replication: the replication role, publications, subscriptions, slots, lag.

Every object is named after the move (`cutover_<move>`), so cleanup finds
exactly ours. The replication role's password is generated when the
subscription is made and handed to the source as a SCRAM verifier computed
here, so no password reaches a server log; only the target's catalog keeps it,
inside the subscription, where PostgreSQL needs it.
"""

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from psycopg import sql
from psycopg.conninfo import make_conninfo

from cutover import wait
from cutover.errors import StepFailed
from cutover.log import register_secret
from cutover.pg import barrier, catalog
from cutover.pg.catalog import Relation, relations
from cutover.pg.connect import Connection, Pool, conninfo
from cutover.pg.execute import change
from cutover.pg.ident import quote
from cutover.pg.queries import load
from cutover.plan import Server
from cutover.steps import Change
from cutover.types import TableName, TableState

# pg_subscription_rel.srsubstate
STATES = {
    "i": TableState.QUEUED,
    "d": TableState.COPYING,
    "f": TableState.CATCHING_UP,
    "s": TableState.SYNCING,
    "r": TableState.READY,
}


def object_name(move: str) -> str:
    """The name of the move's role, publication and subscription."""
    return f"cutover_{move}"


MARK = re.compile(r"^cutover move (?P<move>\S+) (?P<id>[0-9a-f]+)$")


def mark(move: str, move_id: str) -> str:
    """The comment on the role, publication and subscription a move makes: whose they are."""
    return f"cutover move {move} {move_id}"


def comment(
    conn: Connection, kind: str, name: str, text: str, *, where: str, dry_run: bool
) -> Change:
    """COMMENT ON `kind` (ROLE, PUBLICATION, SUBSCRIPTION) `name` IS `text`."""
    statement = sql.SQL("COMMENT ON {} {} IS {}").format(
        sql.SQL(kind), sql.Identifier(name), sql.Literal(text)
    )
    return change(conn, statement, where=where, dry_run=dry_run)


def foreign_marks(conn: Connection, move: str, move_id: str | None, *, roles: bool) -> list[str]:
    """The objects of the connected database (and server, with `roles`) named for `move`
    and marked by another move's identity: those of a second plan of the same move name."""
    name = object_name(move)
    query = (
        "SELECT 'publication' AS kind, pg_catalog.obj_description(oid, 'pg_publication') AS mark "
        "FROM pg_catalog.pg_publication WHERE pubname = %(name)s "
        "UNION ALL SELECT 'subscription', pg_catalog.obj_description(s.oid, 'pg_subscription') "
        "FROM pg_catalog.pg_subscription s JOIN pg_catalog.pg_database d ON d.oid = s.subdbid "
        "WHERE s.subname = %(name)s AND d.datname = pg_catalog.current_database()"
    )
    if roles:
        query += (
            " UNION ALL SELECT 'role', pg_catalog.shobj_description(oid, 'pg_authid') "
            "FROM pg_catalog.pg_roles WHERE rolname = %(name)s"
        )
    found = []
    for row in conn.execute(sql.SQL(query), {"name": name}).fetchall():
        marked = MARK.match(row["mark"] or "")
        if marked and marked["id"] != move_id:
            found.append(f"the {row['kind']} {quote(name)} ({row['mark']})")
    return found


def other_moves(pool: Pool, move: str, move_id: str, databases: Iterable[str]) -> list[str]:
    """`foreign_marks` on both servers: each database of the plan there, and the roles once."""
    found: list[str] = []
    for side in ("source", "target"):
        present = {  # a database that takes no connection is the steps' to report
            r["datname"]
            for r in pool.get(side).execute(
                "SELECT datname FROM pg_catalog.pg_database "
                "WHERE datname = ANY(%s) AND datallowconn",
                (list(databases),),
            )
        }
        found += [
            f"{side}: {what}" for what in foreign_marks(pool.get(side), move, move_id, roles=True)
        ]
        for db in databases:
            if db in present:
                with pool.borrow(side, db) as conn:
                    marks = foreign_marks(conn, move, move_id, roles=False)
                found += [f"{side}/{db}: {what}" for what in marks]
    return found


OTHER_MOVE_HINT = (
    "another plan has the same move name; give this plan another `move:` name. If they are "
    "this plan's own and its state_dir moved, clear their mark on the server (COMMENT ON "
    "ROLE ... IS NULL, and so on) and run again"
)


def slot_name(move: str, db: str) -> str:
    """The move's slot for one database; slot names are server-wide, so the database is in it."""
    return f"cutover_{move}_{hashlib.sha1(db.encode()).hexdigest()[:8]}"


def replicated_tables(conn: Connection) -> list[Relation]:
    """The tables logical replication carries: permanent, ordinary, not an extension's.

    Of cutover's own tables only the barrier is carried (the fence's record is not).
    """
    return [
        r
        for r in relations(conn)
        if r.is_table and r.persistence == "p" and (r.schema, r.name) != ("_cutover", "fence")
    ]


def unlogged_tables(conn: Connection) -> list[Relation]:
    """The tables copied once at start and never replicated: unlogged ones write no WAL."""
    return [r for r in relations(conn) if r.is_table and r.persistence == "u"]


def with_barrier(tables: Iterable[tuple[str, str]]) -> list[TableName]:
    """The tables and the barrier table, which every move replicates, in order of name.

    Prepare creates the barrier before it publishes; a dry run creates nothing,
    and still shows the very statement the run will send.
    """
    return sorted({*(TableName(*t) for t in tables), barrier.TABLE})


def display(table: tuple[str, str]) -> str:
    """A table's qualified name as SQL spells it."""
    return quote(table)


def _exists(conn: Connection, query: sql.SQL, name: str) -> bool:
    return conn.execute(query, (name,)).fetchone() is not None


# -- the replication role (source) -------------------------------------------------------------


def role_exists(conn: Connection, role: str) -> bool:
    """Whether the role exists on the connected server."""
    return _exists(conn, sql.SQL("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s"), role)


def replicating_role(conn: Connection, own: str, plan_user: str) -> str:
    """The role the target replicates as: the move's own, or the plan's user where that
    user may not create a replication role (a non-superuser on PostgreSQL 15)."""
    if role_exists(conn, own) or catalog.may_create_replication_roles(conn):
        return own
    return plan_user


def create_role(
    conn: Connection, role: str, *, marked: str, where: str, dry_run: bool
) -> list[Change]:
    """A login role that may replicate and nothing else yet, `marked` as the move's;
    its password comes later."""
    if role_exists(conn, role):
        return []
    statement = sql.SQL("CREATE ROLE {} LOGIN REPLICATION").format(sql.Identifier(role))
    return [
        change(conn, statement, where=where, dry_run=dry_run),
        comment(conn, "ROLE", role, marked, where=where, dry_run=dry_run),
    ]


def grant_read(
    conn: Connection, role: str, schemas: list[str], *, where: str, dry_run: bool
) -> list[Change]:
    """USAGE on the schemas and SELECT on their tables: what the initial copy reads.

    The barrier's schema is always among them (see `with_barrier`).
    """
    changes = []
    for schema in sorted({*schemas, barrier.SCHEMA}):
        for template in (
            "GRANT USAGE ON SCHEMA {} TO {}",
            "GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {}",
        ):
            statement = sql.SQL(template).format(sql.Identifier(schema), sql.Identifier(role))
            changes.append(change(conn, statement, where=where, dry_run=dry_run))
    return changes


def grant_tables(
    conn: Connection,
    privilege: Literal["SELECT", "INSERT"],
    role: str,
    tables: Sequence[TableName],
    *,
    where: str,
    dry_run: bool,
) -> list[Change]:
    """`privilege` on tables made after the grants of prepare or start (which covered the
    tables of their moment)."""
    if not tables:
        return []
    statement = sql.SQL("GRANT {} ON {} TO {}").format(
        sql.SQL(privilege),
        sql.SQL(", ").join(sql.Identifier(*t) for t in tables),
        sql.Identifier(role),
    )
    return [change(conn, statement, where=where, dry_run=dry_run)]


def can_read(conn: Connection, role: str, tables: list[Relation]) -> bool:
    """Whether `role` may read every table."""
    query = sql.SQL(
        "SELECT bool_and(pg_catalog.has_table_privilege(%s, c.oid, 'SELECT')) AS ok "
        "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
        "WHERE (n.nspname, c.relname) IN (SELECT * FROM unnest(%s::text[], %s::text[]))"
    )
    row = conn.execute(
        query, (role, [t.schema for t in tables], [t.name for t in tables])
    ).fetchone()
    return bool(row and row["ok"] is not False)


def password_verifier(conn: Connection, role: str, password: str) -> str:
    """A password's SCRAM verifier, computed here: the clear text never reaches a server log."""
    verifier = conn.pgconn.encrypt_password(password.encode(), role.encode(), b"scram-sha-256")
    register_secret(verifier.decode())  # not the password, but no business in a log either
    return verifier.decode()


def set_password(
    conn: Connection, role: str, password: str, *, where: str, dry_run: bool
) -> Change:
    """Give the role a password, sent as a SCRAM verifier rather than in clear."""
    statement = sql.SQL("ALTER ROLE {} PASSWORD {}").format(
        sql.Identifier(role), sql.Literal(password_verifier(conn, role, password))
    )
    return change(conn, statement, where=where, dry_run=dry_run)


# -- the publication (source) --------------------------------------------------------------------


def publication_exists(conn: Connection, name: str) -> bool:
    """Whether the publication exists in the connected database."""
    query = sql.SQL("SELECT 1 FROM pg_catalog.pg_publication WHERE pubname = %s")
    return _exists(conn, query, name)


def create_publication(
    conn: Connection,
    name: str,
    tables: list[Relation],
    *,
    marked: str,
    where: str,
    dry_run: bool,
) -> list[Change]:
    """A publication of exactly these tables and the barrier (FOR ALL TABLES would need a
    superuser), `marked` as the move's."""
    if publication_exists(conn, name):
        return []
    published = with_barrier((t.schema, t.name) for t in tables)
    statement = sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
        sql.Identifier(name), sql.SQL(", ").join(sql.Identifier(*t) for t in published)
    )
    return [
        change(conn, statement, where=where, dry_run=dry_run),
        comment(conn, "PUBLICATION", name, marked, where=where, dry_run=dry_run),
    ]


def publish(
    conn: Connection, name: str, tables: Sequence[TableName], *, where: str, dry_run: bool
) -> Change:
    """Add tables to the move's publication."""
    statement = sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
        sql.Identifier(name), sql.SQL(", ").join(sql.Identifier(*t) for t in tables)
    )
    return change(conn, statement, where=where, dry_run=dry_run)


# -- the subscription (target) -------------------------------------------------------------------


def refresh_subscription(conn: Connection, name: str, *, where: str, dry_run: bool) -> Change:
    """Subscribe to the tables the publication gained; their rows are copied first."""
    statement = sql.SQL("ALTER SUBSCRIPTION {} REFRESH PUBLICATION WITH (copy_data = true)").format(
        sql.Identifier(name)
    )
    return change(conn, statement, where=where, dry_run=dry_run)


def source_conninfo(source: Server, db: str, *, role: str, password: str) -> str:
    """How the target's subscription reaches the source, as the replication role."""
    params = conninfo(source, db, label="source")
    params.pop("password", None)
    params.update(
        host=source.peer_host,
        port=source.replication_port or source.port,
        user=role,
        password=password,
        application_name=role,
    )
    return make_conninfo(**{k: str(v) for k, v in params.items()})


def subscription_exists(conn: Connection, name: str) -> bool:
    """Whether the subscription exists in the connected database."""
    query = sql.SQL(
        "SELECT 1 FROM pg_catalog.pg_subscription s JOIN pg_catalog.pg_database d "
        "ON d.oid = s.subdbid WHERE s.subname = %s AND d.datname = pg_catalog.current_database()"
    )
    return _exists(conn, query, name)


def create_subscription(
    conn: Connection,
    name: str,
    *,
    source_dsn: str,
    slot: str,
    create_slot: bool,
    enabled: bool,
    where: str,
    dry_run: bool,
) -> Change:
    """Subscribe to the publication of the same name; the rows are on the target already.

    Without `create_slot` it streams from the slot the initial copy started
    from; disabled, it applies nothing until enabled.
    """
    statement = sql.SQL(
        "CREATE SUBSCRIPTION {name} CONNECTION {dsn} PUBLICATION {name} WITH (slot_name = {slot}, "
        "create_slot = {create}, enabled = {enabled}, copy_data = false, streaming = on)"
    ).format(
        name=sql.Identifier(name),
        dsn=sql.Literal(source_dsn),
        slot=sql.Literal(slot),
        create=sql.Literal(create_slot),
        enabled=sql.Literal(enabled),
    )
    return change(conn, statement, where=where, dry_run=dry_run)


def set_connection(
    conn: Connection, name: str, source_dsn: str, *, where: str, dry_run: bool
) -> Change:
    """Point the subscription at the source anew (a new password): its worker reconnects."""
    statement = sql.SQL("ALTER SUBSCRIPTION {} CONNECTION {}").format(
        sql.Identifier(name), sql.Literal(source_dsn)
    )
    return change(conn, statement, where=where, dry_run=dry_run)


def subscription_enabled(conn: Connection, name: str) -> bool:
    """Whether the subscription exists in the connected database and is enabled."""
    row = conn.execute(
        sql.SQL(
            "SELECT s.subenabled FROM pg_catalog.pg_subscription s JOIN pg_catalog.pg_database d "
            "ON d.oid = s.subdbid WHERE s.subname = %s AND d.datname = "
            "pg_catalog.current_database()"
        ),
        (name,),
    ).fetchone()
    return bool(row and row["subenabled"])


def enable_subscription(conn: Connection, name: str, *, where: str, dry_run: bool) -> Change:
    """Start applying what the slot streams."""
    statement = sql.SQL("ALTER SUBSCRIPTION {} ENABLE").format(sql.Identifier(name))
    return change(conn, statement, where=where, dry_run=dry_run)


@dataclass(frozen=True)
class TableSync:
    """One table's state in the subscription, and its size on the source side."""

    schema: str
    name: str
    state: TableState


def table_states(conn: Connection, subscription: str) -> list[TableSync]:
    """Each subscribed table's copy state, from the target's catalog."""
    rows = conn.execute(load("subscription_tables"), (subscription,)).fetchall()
    return [
        TableSync(r["schema"], r["name"], STATES.get(str(r["state"]), TableState.UNKNOWN))
        for r in rows
    ]


def table_sizes(conn: Connection, tables: Sequence[tuple[str, str]]) -> dict[TableName, int]:
    """The size of each table's heap and TOAST: what the initial copy reads."""
    rows = conn.execute(load("table_sizes"), ([t[0] for t in tables], [t[1] for t in tables]))
    return {TableName(r["schema"], r["name"]): int(r["bytes"]) for r in rows.fetchall()}


@dataclass(frozen=True)
class TargetCopy:
    """One table of a copy running in another process, as the target shows it."""

    schema: str
    name: str
    state: TableState
    bytes_source: int
    bytes_target: int


def copy_states(
    source: Connection, target: Connection, tables: Sequence[tuple[str, str]]
) -> list[TargetCopy]:
    """Each table's state during an initial copy, read from the servers alone.

    A table is copying while a COPY into it runs, copied once the target holds
    pages of it, queued before; bytes are the tables' sizes on either side.
    """
    sizes = table_sizes(source, tables)
    rows = target.execute(
        load("copy_states"), ([t[0] for t in tables], [t[1] for t in tables])
    ).fetchall()
    return [
        TargetCopy(
            r["schema"],
            r["name"],
            TableState.COPYING
            if r["copying"]
            else TableState.COPIED
            if r["bytes"]
            else TableState.QUEUED,
            sizes.get(TableName(r["schema"], r["name"]), 0),
            int(r["bytes"]),
        )
        for r in rows
    ]


# -- the slot and the lag (source) ---------------------------------------------------------------


@dataclass(frozen=True)
class SlotState:
    """What the source knows of the move's slot; lag is against its current WAL position."""

    lag_bytes: int
    retained_bytes: int
    wal_status: str
    safe_wal_size: int | None  # bytes left before max_slot_wal_keep_size invalidates it
    active: bool
    lag_seconds: float | None


def slot_state(conn: Connection, slot: str) -> SlotState | None:
    """The slot's lag and retained WAL, or None if it does not exist."""
    literal = slot.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return slot_states(conn, literal).get(slot)


def slot_states(conn: Connection, pattern: str) -> dict[str, SlotState]:
    """The connected database's logical slots whose names match `pattern` (LIKE), by name."""
    rows = conn.execute(load("slot_states_like"), (pattern,)).fetchall()
    return {
        row["slot_name"]: SlotState(
            lag_bytes=max(0, int(row["lag_bytes"] or 0)),
            retained_bytes=max(0, int(row["retained_bytes"] or 0)),
            wal_status=row["wal_status"] or "unknown",
            safe_wal_size=None if row["safe_wal_size"] is None else int(row["safe_wal_size"]),
            active=bool(row["active"]),
            lag_seconds=None if row["lag_seconds"] is None else float(row["lag_seconds"]),
        )
        for row in rows
    }


def set_synchronous_commit(conn: Connection, name: str, *, where: str, dry_run: bool) -> Change:
    """Apply commits flush at once, so the slot's confirmed position follows within ms."""
    statement = sql.SQL("ALTER SUBSCRIPTION {} SET (synchronous_commit = 'on')").format(
        sql.Identifier(name)
    )
    return change(conn, statement, where=where, dry_run=dry_run)


def synchronous_commit(conn: Connection, name: str) -> bool:
    """Whether the subscription of the connected database applies its commits synchronously."""
    row = conn.execute(
        sql.SQL(
            "SELECT s.subsynccommit FROM pg_catalog.pg_subscription s "
            "JOIN pg_catalog.pg_database d ON d.oid = s.subdbid "
            "WHERE s.subname = %s AND d.datname = pg_catalog.current_database()"
        ),
        (name,),
    ).fetchone()
    return row is not None and row["subsynccommit"] == "on"


def drop_subscription(conn: Connection, name: str, *, where: str, dry_run: bool) -> list[Change]:
    """End the subscription without touching the source (its slot is dropped separately)."""
    ident = sql.Identifier(name)
    return [
        change(conn, sql.SQL(s).format(ident), where=where, dry_run=dry_run)
        for s in (
            "ALTER SUBSCRIPTION {} DISABLE",
            "ALTER SUBSCRIPTION {} SET (slot_name = NONE)",
            "DROP SUBSCRIPTION {}",
        )
    ]


def drop_slot(
    conn: Connection, slot: str, *, where: str, dry_run: bool, timeout: float = 10.0
) -> list[Change]:
    """Drop the slot once its walsender has gone (it ends after the subscription is disabled)."""
    statement = sql.SQL("SELECT pg_catalog.pg_drop_replication_slot(%s)")
    if dry_run:
        return [change(conn, statement, (slot,), where=where, dry_run=True)]
    wait.until(
        lambda: _slot_free(conn, slot),
        timeout=timeout,
        what=f"the replication slot {slot} was not released",
        hint="another subscriber uses it; drop it by hand once it is free",
    )
    if not slot_exists(conn, slot):
        return []
    return [change(conn, statement, (slot,), where=where, dry_run=False)]


def released(conn: Connection, slot: str, *, timeout: float, poll: float = 0.05) -> bool:
    """Wait until no sender streams from the slot, or it is gone; False if still in use."""
    try:
        wait.until(
            lambda: _slot_free(conn, slot),
            timeout=timeout,
            what=f"the replication slot {slot} was not released",
            hint="another subscriber uses it",
            interval=poll,
        )
    except StepFailed:
        return False
    return True


def _slot_free(conn: Connection, slot: str) -> bool:
    """No sender streams from the slot, or it is gone."""
    row = conn.execute(
        sql.SQL("SELECT active FROM pg_catalog.pg_replication_slots WHERE slot_name = %s"),
        (slot,),
    ).fetchone()
    return row is None or not row["active"]


def slot_exists(conn: Connection, slot: str) -> bool:
    """Whether the slot exists on the connected server."""
    return _exists(
        conn, sql.SQL("SELECT 1 FROM pg_catalog.pg_replication_slots WHERE slot_name = %s"), slot
    )


def drop_publication(conn: Connection, name: str, *, where: str, dry_run: bool) -> list[Change]:
    """Drop the move's publication."""
    statement = sql.SQL("DROP PUBLICATION IF EXISTS {}").format(sql.Identifier(name))
    return [change(conn, statement, where=where, dry_run=dry_run)]


def drop_role(
    conns: Iterable[Connection],
    maintenance: Connection,
    role: str,
    *,
    heir: str,
    where: str,
    dry_run: bool,
) -> list[Change]:
    """Give what the role owns to `heir` and revoke its grants in each database, then drop it."""
    if not role_exists(maintenance, role):
        return []
    changes = []
    for conn in conns:
        for template in ("REASSIGN OWNED BY {} TO {}", "DROP OWNED BY {}"):
            statement = sql.SQL(template).format(sql.Identifier(role), sql.Identifier(heir))
            here = f"{where}/{conn.info.dbname}"
            changes.append(change(conn, statement, where=here, dry_run=dry_run))
    statement = sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role))
    changes.append(change(maintenance, statement, where=where, dry_run=dry_run))
    return changes
