"""Copying the schema with pg_dump and pg_restore, in the order a fast copy needs.

1. pre-data (schemas, tables, types, functions, views...) in one transaction;
2. the keys replication needs during the copy: primary keys and replica-identity
   indexes;
3. after the copy, the rest of post-data (other indexes, foreign keys,
   triggers) with parallel jobs: building them after the data is faster.

The archive's table of contents names objects with tags that become ambiguous
with spaces in names, so entries are identified by their catalog and OID on
the source. Steps 2 and 3 skip every object the target already has, so a
restore that was killed resumes without "already exists" errors.
"""

import os
import re
import tempfile
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path

from psycopg import sql
from psycopg.conninfo import make_conninfo

from cutover.pg import barrier, tools
from cutover.pg.connect import Connection
from cutover.pg.ident import quote
from cutover.plan import Server
from cutover.types import TableName

PG_CLASS, PG_CONSTRAINT, PG_TRIGGER, PG_REWRITE, PG_POLICY = 1259, 2606, 2620, 2618, 3256
PG_EVENT_TRIGGER = 3466
_TOC_LINE = re.compile(r"^(\d+); (\d+) (\d+) ")


@dataclass(frozen=True)
class TocEntry:
    """One line of `pg_restore -l`: an object of the archive."""

    line: str
    classid: int
    oid: int


def dump(server: Server, db: str, path: Path, *, table: TableName | None = None) -> None:
    """The database's schema (or one table's) as a custom-format archive, written atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(fd)
    try:
        tools.run(
            "pg_dump",
            "--schema-only",
            "--format=custom",
            "--no-publications",
            "--no-subscriptions",
            # cutover's own schema belongs to the plan's user, who may not exist on the
            # target: create_target_barrier makes the target's.
            f"--exclude-schema={barrier.SCHEMA}",
            *([] if table is None else [f"--table={quote(table)}"]),
            f"--file={tmp}",
            env=tools.client_env(server, db, label="source"),
            what="pg_dump of the schema" if table is None else f"pg_dump of {quote(table)}",
        )
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def toc(archive: Path, *, section: str) -> list[TocEntry]:
    """The entries of one section (pre-data, post-data) of an archive."""
    listing = tools.run(
        "pg_restore", "--list", f"--section={section}", str(archive), what="pg_restore --list"
    ).stdout
    entries = []
    for line in listing.splitlines():
        match = _TOC_LINE.match(line)
        if match:
            entries.append(TocEntry(line, int(match.group(2)), int(match.group(3))))
    return entries


def without_event_triggers(entries: list[TocEntry], names: Collection[str]) -> list[TocEntry]:
    """The entries but those of the event triggers named (names without spaces)."""
    left_out = set(names)
    return [e for e in entries if _event_trigger(e) not in left_out]


def _event_trigger(entry: TocEntry) -> str | None:
    """An event trigger's name: its line reads `<id>; 3466 <oid> EVENT TRIGGER - <name> <owner>`."""
    words = entry.line.split(" ")
    return words[6] if entry.classid == PG_EVENT_TRIGGER and len(words) > 6 else None


def restore_pre_data(server: Server, db: str, archive: Path) -> None:
    """Create every pre-data object, all or nothing."""
    restore(server, db, archive, section="pre-data", what="pg_restore of the schema (pre-data)")


def restore(
    server: Server, db: str, archive: Path, *, section: str | None = None, what: str
) -> None:
    """Create every object of the archive (or of one section of it), all or nothing."""
    tools.run(
        "pg_restore",
        *([] if section is None else [f"--section={section}"]),
        "--single-transaction",
        "--exit-on-error",
        _dbname(db),
        str(archive),
        env=tools.client_env(server, db, label="target"),
        what=what,
    )


def restore_entries(
    server: Server,
    db: str,
    archive: Path,
    entries: list[TocEntry],
    *,
    jobs: int,
    index_memory: int | None = None,
) -> None:
    """Restore exactly these entries of an archive, `jobs` at a time.

    `index_memory` (bytes) is each session's maintenance_work_mem: an index
    sorted in memory builds several times faster than one sorted on disk.
    """
    if not entries:
        return
    env = tools.client_env(server, db, label="target")
    if index_memory:  # the server's limit is 2 GB
        kilobytes = min(index_memory // 1024, 2 * 1024**2 - 1)
        env["PGOPTIONS"] = f"{env.get('PGOPTIONS', '')} -c maintenance_work_mem={kilobytes}kB"
    with tempfile.NamedTemporaryFile("w", suffix=".list", delete=False) as listing:
        listing.write("\n".join(e.line for e in entries) + "\n")
    try:
        tools.run(
            "pg_restore",
            f"--use-list={listing.name}",
            f"--jobs={jobs}",
            "--exit-on-error",
            _dbname(db),
            str(archive),
            env=env,
            what="pg_restore of indexes and constraints",
        )
    finally:
        os.unlink(listing.name)


def _dbname(db: str) -> str:
    # Always a conninfo: a bare name holding '=' would be read as one anyway.
    return f"--dbname={make_conninfo(dbname=db)}"


def missing_on_target(
    source: Connection, target: Connection, entries: list[TocEntry]
) -> list[TocEntry]:
    """The entries whose object the target does not have yet (unknown kinds count as missing)."""
    present: set[int] = set()
    for classid, query in _NAMES.items():
        oids = [e.oid for e in entries if e.classid == classid]
        if not oids:
            continue
        rows = source.execute(sql.SQL(query), (oids,)).fetchall()
        names = {(r["schema"], r["owner"], r["name"]): r["oid"] for r in rows}
        found = target.execute(
            sql.SQL(_EXISTS[classid]).format(wanted=_WANTED),
            (
                [k[0] for k in names],
                [k[1] for k in names],
                [k[2] for k in names],
            ),
        ).fetchall()
        present |= {names[(r["schema"], r["owner"], r["name"])] for r in found}
    return [e for e in entries if e.oid not in present]


# For each kind of post-data object: its (schema, table or '', name) on the source by OID...
_NAMES = {
    PG_CONSTRAINT: "SELECT c.oid, n.nspname AS schema, t.relname AS owner, c.conname AS name "
    "FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_class t ON t.oid = c.conrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace WHERE c.oid = ANY(%s)",
    PG_CLASS: "SELECT c.oid, n.nspname AS schema, '' AS owner, c.relname AS name "
    "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE c.oid = ANY(%s)",
    PG_TRIGGER: "SELECT g.oid, n.nspname AS schema, t.relname AS owner, g.tgname AS name "
    "FROM pg_catalog.pg_trigger g JOIN pg_catalog.pg_class t ON t.oid = g.tgrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace WHERE g.oid = ANY(%s)",
    PG_REWRITE: "SELECT r.oid, n.nspname AS schema, t.relname AS owner, r.rulename AS name "
    "FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class t ON t.oid = r.ev_class "
    "JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace WHERE r.oid = ANY(%s)",
    PG_POLICY: "SELECT p.oid, n.nspname AS schema, t.relname AS owner, p.polname AS name "
    "FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class t ON t.oid = p.polrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace WHERE p.oid = ANY(%s)",
}
# ...and which of those (schema, table, name) triples exist on the target.
_WANTED = sql.SQL("(SELECT * FROM unnest(%s::text[], %s::text[], %s::text[]))")
_EXISTS = {
    PG_CONSTRAINT: "SELECT n.nspname AS schema, t.relname AS owner, c.conname AS name "
    "FROM pg_catalog.pg_constraint c JOIN pg_catalog.pg_class t ON t.oid = c.conrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace "
    "WHERE (n.nspname, t.relname, c.conname) IN {wanted}",
    PG_CLASS: "SELECT n.nspname AS schema, '' AS owner, c.relname AS name "
    "FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
    "WHERE (n.nspname, '', c.relname) IN {wanted}",
    PG_TRIGGER: "SELECT n.nspname AS schema, t.relname AS owner, g.tgname AS name "
    "FROM pg_catalog.pg_trigger g JOIN pg_catalog.pg_class t ON t.oid = g.tgrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace "
    "WHERE (n.nspname, t.relname, g.tgname) IN {wanted}",
    PG_REWRITE: "SELECT n.nspname AS schema, t.relname AS owner, r.rulename AS name "
    "FROM pg_catalog.pg_rewrite r JOIN pg_catalog.pg_class t ON t.oid = r.ev_class "
    "JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace "
    "WHERE (n.nspname, t.relname, r.rulename) IN {wanted}",
    PG_POLICY: "SELECT n.nspname AS schema, t.relname AS owner, p.polname AS name "
    "FROM pg_catalog.pg_policy p JOIN pg_catalog.pg_class t ON t.oid = p.polrelid "
    "JOIN pg_catalog.pg_namespace n ON n.oid = t.relnamespace "
    "WHERE (n.nspname, t.relname, p.polname) IN {wanted}",
}


def missing_roles(source: Connection, target: Connection) -> list[str]:
    """Roles that own or are granted source objects but do not exist on the target."""
    rows = source.execute(sql.SQL(_ROLES_QUERY)).fetchall()
    wanted = sorted({r["role"] for r in rows})
    present = target.execute(
        sql.SQL("SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)"), (wanted,)
    ).fetchall()
    return sorted(set(wanted) - {r["rolname"] for r in present})


_ROLES_QUERY = """
SELECT pg_catalog.pg_get_userbyid(c.relowner) AS role FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', '_cutover')
AND n.nspname NOT LIKE 'pg\\_%'
UNION
SELECT pg_catalog.pg_get_userbyid(n.nspowner) FROM pg_catalog.pg_namespace n
WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', '_cutover')
AND n.nspname NOT LIKE 'pg\\_%'
UNION
SELECT pg_catalog.pg_get_userbyid(a.grantee) FROM pg_catalog.pg_class c
JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace,
LATERAL pg_catalog.aclexplode(c.relacl) a
WHERE a.grantee <> 0 AND n.nspname NOT IN ('pg_catalog', 'information_schema', '_cutover')
"""
