"""What the DMS engine needs of PostgreSQL: the migration service's slots, and ownership.

Google's Database Migration Service replicates with pglogical: its slots on
the source are pglogical's (`pgl_<db>_<node>_<subscription>`), and what they
confirmed, against the source's current WAL, is the exact lag that no
monitoring sample gives. On the destination every object it created belongs
to `cloudsqlexternalsync`; after the promotion each goes back to the role that
owns it on the source, object by object, not all to one role; and what the source
grants on its schemas and relations is granted on the destination too (DMS
carries no role and no grant).
"""

from dataclasses import dataclass

from psycopg import sql

from cutover.pg import catalog, replication
from cutover.pg.connect import Connection
from cutover.pg.execute import change, changes
from cutover.pg.queries import load
from cutover.steps import Change

EXTERNAL_SYNC = "cloudsqlexternalsync"  # the role that owns what DMS made on the destination
PGLOGICAL_SLOTS = r"pgl\_%"  # LIKE: the slots pglogical names for its subscriptions
_QUALIFIED = frozenset({"TABLE", "VIEW", "MATERIALIZED VIEW", "SEQUENCE", "FOREIGN TABLE", "TYPE"})
_ROUTINES = frozenset({"ROUTINE", "AGGREGATE"})


@dataclass(frozen=True)
class Owned:
    """An object a user made, and its owner."""

    kind: str  # SCHEMA, TABLE, VIEW, MATERIALIZED VIEW, SEQUENCE, FOREIGN TABLE, TYPE, ROUTINE...
    schema: str
    name: str
    signature: str  # a routine's argument types; '' for anything else
    routine: str | None  # a routine as PostgreSQL spells it (regprocedure), quoted by the server
    owner: str

    @property
    def key(self) -> tuple[str, str, str, str]:
        """What names the same object on both servers."""
        return (self.kind, self.schema, self.name, self.signature)

    def alter_owner(self, role: str) -> sql.Composed:
        """ALTER ... OWNER TO `role`."""
        to = sql.Identifier(role)
        if self.kind == "SCHEMA":
            return sql.SQL("ALTER SCHEMA {} OWNER TO {}").format(sql.Identifier(self.name), to)
        if self.kind in _QUALIFIED:
            return sql.SQL("ALTER {} {} OWNER TO {}").format(
                sql.SQL(self.kind), sql.Identifier(self.schema, self.name), to
            )
        if self.kind in _ROUTINES and self.routine:
            # regprocedure's text is the server's own rendering of the signature, every name
            # in it quoted where needed, for this connection's search_path: not user input.
            return sql.SQL("ALTER {} {} OWNER TO {}").format(
                sql.SQL(self.kind), sql.SQL(self.routine), to
            )
        raise ValueError(f"no ALTER ... OWNER for a {self.kind}")


def object_owners(conn: Connection) -> list[Owned]:
    """Every object a user made in the connected database, with its owner."""
    return [
        Owned(r["kind"], r["schema"], r["name"], r["signature"], r["routine"], r["owner"])
        for r in conn.execute(load("object_owners")).fetchall()
    ]


def owned_by(conn: Connection, role: str) -> list[Owned]:
    """The objects of the connected database that `role` owns."""
    return [o for o in object_owners(conn) if o.owner == role]


def give_back_ownership(
    source: Connection,
    target: Connection,
    *,
    holder: str,
    fallback: str,
    where: str,
    dry_run: bool,
) -> list[Change]:
    """Each target object `holder` owns goes to its owner on the source.

    An object the source does not have, or whose owner is no role on the target
    (DMS carries no role), goes to `fallback`, and the change says so.
    """
    held = owned_by(target, holder)
    if not held:
        return []
    owners = {o.key: o.owner for o in object_owners(source)}
    exists: dict[str, bool] = {}
    statements, fell_back = [], []
    for obj in held:
        owner = owners.get(obj.key, fallback)
        if owner not in exists:
            exists[owner] = replication.role_exists(target, owner)
        if not exists[owner] and owner != fallback:
            owner = fallback
        statements.append(obj.alter_owner(owner))
        fell_back.append(owner == fallback and owners.get(obj.key) != fallback)
    done = changes(target, statements, where=where, dry_run=dry_run)
    return [
        Change(d.where, f"{d.action} (its source owner is no role here)") if fell else d
        for d, fell in zip(done, fell_back, strict=True)
    ]


# What aclexplode names, and GRANT takes: nothing else is ever put in a statement.
_PRIVILEGES = frozenset(
    {
        "SELECT",
        "INSERT",
        "UPDATE",
        "DELETE",
        "TRUNCATE",
        "REFERENCES",
        "TRIGGER",
        "USAGE",
        "CREATE",
        "MAINTAIN",
    }
)


@dataclass(frozen=True)
class Grant:
    """One privilege granted on a schema or a relation ('' grantee: PUBLIC)."""

    kind: str  # SCHEMA, TABLE (views and the like too) or SEQUENCE
    schema: str
    name: str
    grantee: str
    privilege: str
    grantable: bool

    def statement(self) -> sql.Composed:
        """GRANT ... ON ... TO ...."""
        if self.privilege not in _PRIVILEGES or self.kind not in ("SCHEMA", "TABLE", "SEQUENCE"):
            raise ValueError(f"no GRANT of {self.privilege} on a {self.kind}")
        target = (
            sql.Identifier(self.name)
            if self.kind == "SCHEMA"
            else sql.Identifier(self.schema, self.name)
        )
        to = sql.Identifier(self.grantee) if self.grantee else sql.SQL("PUBLIC")
        return sql.SQL("GRANT {} ON {} {} TO {}{}").format(
            sql.SQL(self.privilege),
            sql.SQL(self.kind),
            target,
            to,
            sql.SQL(" WITH GRANT OPTION" if self.grantable else ""),
        )


def grants(conn: Connection) -> set[Grant]:
    """What the connected database grants on its users' schemas and relations."""
    return {
        Grant(r["kind"], r["schema"], r["name"], r["grantee"], r["privilege"], r["grantable"])
        for r in conn.execute(load("object_privileges")).fetchall()
    }


def copy_grants(
    source: Connection, target: Connection, *, where: str, dry_run: bool
) -> list[Change]:
    """Grant on the target what the source grants and the target does not yet.

    A grantee that is no role on the target is left out, and the change says so.
    """
    missing = sorted(
        grants(source) - grants(target),
        key=lambda g: (g.kind, g.schema, g.name, g.grantee, g.privilege),
    )
    exists: dict[str, bool] = {}
    skipped: list[Change] = []
    statements = []
    for grant in missing:
        if grant.grantee and grant.grantee not in exists:
            exists[grant.grantee] = replication.role_exists(target, grant.grantee)
        if grant.grantee and not exists[grant.grantee]:
            skipped.append(
                Change(
                    where,
                    f"not granted: {grant.privilege} on {grant.schema}.{grant.name} "
                    f"to {grant.grantee}, who is no role here",
                )
            )
            continue
        statements.append(grant.statement())
    return changes(target, statements, where=where, dry_run=dry_run) + skipped


def _barrier_schema_comment(conn: Connection) -> str | None:
    row = conn.execute(
        sql.SQL(
            "SELECT pg_catalog.obj_description(oid, 'pg_namespace') AS note "
            "FROM pg_catalog.pg_namespace WHERE nspname = '_cutover'"
        )
    ).fetchone()
    return None if row is None else row["note"]


def promotion_mark(move: str) -> str:
    """The comment a promotion leaves on the target's `_cutover` schema."""
    return f"cutover move {move} promoted"


def marked_promoted(conn: Connection, move: str) -> bool:
    """Whether the connected target database carries the move's promotion mark."""
    return _barrier_schema_comment(conn) == promotion_mark(move)


def mark_promoted(conn: Connection, move: str, *, where: str, dry_run: bool) -> Change:
    """Mark the target promoted: the migration job, deleted afterwards, no longer says so.

    A comment, not a row: the barrier table's rows are compared between the sides.
    """
    statement = sql.SQL("COMMENT ON SCHEMA _cutover IS {}").format(
        sql.Literal(promotion_mark(move))
    )
    return change(conn, statement, where=where, dry_run=dry_run)


def decodes_with_pglogical(conn: Connection) -> bool:
    """wal_level is logical and pglogical is loaded: what DMS needs of a source."""
    found = catalog.settings(conn, ["wal_level", "shared_preload_libraries"])
    loaded = [lib.strip() for lib in found.get("shared_preload_libraries", "").split(",")]
    return found.get("wal_level") == "logical" and "pglogical" in loaded
