"""Large objects: counted for `check`, copied by the switch while the source is fenced.

Logical replication carries no large object, so a move that keeps them copies
each one during the write pause: same OID, same bytes, same owner, same
privileges, and the target's objects that the source no longer has are
deleted. The copy compares before it writes: an object whose bytes are already
equal on the target (by digests each server computes over its own side) is
left alone and only its owner and privileges are set again if they differ, so
a copy that was cut short, or is run again after a rolled-back switch, goes on
with what is left. A large object travels in chunks of `CHUNK` bytes, never
whole; small ones travel many to a round trip.
"""

import json
import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from cutover.errors import PreconditionFailed
from cutover.pg.connect import Connection
from cutover.pg.ident import statement
from cutover.pg.queries import load
from cutover.steps import Change

log = logging.getLogger(__name__)

INV_READ = 0x40000  # lo_open's mode for reading
CHUNK = 1 << 20  # bytes of one object read and written at a time
BATCH_BYTES = 8 << 20  # objects up to CHUNK bytes travel together, this many bytes at most
BATCH_OBJECTS = 1000
# What a large object's ACL can grant, as the keywords of a GRANT.
PRIVILEGES = {"SELECT": sql.SQL("SELECT"), "UPDATE": sql.SQL("UPDATE")}

Grant = tuple[str, str, bool]  # (grantee, '' for PUBLIC; privilege; with grant option)


@dataclass(frozen=True)
class Summary:
    """How many large objects a database holds and how large they are."""

    count: int
    bytes: int | None  # None: pg_largeobject is not readable (only superusers may)
    disk_bytes: int  # pg_largeobject on disk, indexes included: known to anyone


@dataclass(frozen=True)
class LargeObject:
    """One large object as the copy compares it."""

    oid: int
    owner: str
    size: int
    grants: tuple[Grant, ...]  # effective privileges in ACL order; the owner's default if none


@dataclass(frozen=True)
class Work:
    """What a copy has to do on the target, found by comparing both sides."""

    copy: tuple[LargeObject, ...]  # missing on the target, or with other bytes
    fix: tuple[LargeObject, ...]  # bytes equal, owner or privileges not
    delete: tuple[int, ...]  # on the target only
    unchanged: int
    present: dict[int, LargeObject]  # the target's objects before the copy

    @property
    def done(self) -> bool:
        """Nothing left to do."""
        return not (self.copy or self.fix or self.delete)


def _readable(conn: Connection) -> bool:
    """Whether pg_largeobject may be read (superusers only, unless granted)."""
    row = conn.execute(
        sql.SQL(
            "SELECT pg_catalog.has_table_privilege('pg_catalog.pg_largeobject', 'SELECT') AS ok"
        )
    ).fetchone()
    return bool(row and row["ok"])


def summary(conn: Connection) -> Summary:
    """Count, size (when readable) and size on disk of the current database's large objects."""
    row = conn.execute(
        sql.SQL(
            "SELECT (SELECT count(*) FROM pg_catalog.pg_largeobject_metadata) AS objects, "
            "pg_catalog.pg_total_relation_size('pg_catalog.pg_largeobject') AS disk_bytes"
        )
    ).fetchone()
    assert row is not None
    size = None
    if _readable(conn):
        total = sql.SQL("SELECT coalesce(sum(s.size), 0) AS bytes FROM ({}) AS s")
        found = conn.execute(total.format(load("large_object_sizes"))).fetchone()
        size = int(found["bytes"]) if found else 0
    return Summary(int(row["objects"]), size, int(row["disk_bytes"]))


def sizes(conn: Connection) -> dict[int, int]:
    """Each large object's size in bytes, by OID.

    From pg_largeobject's last pages where it is readable; otherwise each object
    is opened and sought to its end, which needs the right to read it (as the
    copy does), and its descriptor closes with the statement's transaction.
    """
    if _readable(conn):
        rows = conn.execute(load("large_object_sizes")).fetchall()
    else:
        rows = conn.execute(
            sql.SQL(
                "SELECT m.oid::bigint AS oid, "
                "pg_catalog.lo_lseek64(pg_catalog.lo_open(m.oid, %s), 0, 2) AS size "
                "FROM pg_catalog.pg_largeobject_metadata m"
            ),
            (INV_READ,),
        ).fetchall()
    return {int(r["oid"]): int(r["size"]) for r in rows}


def listing(conn: Connection) -> dict[int, LargeObject]:
    """Every large object of the current database, by OID."""
    size = sizes(conn)
    return {
        int(r["oid"]): LargeObject(
            int(r["oid"]),
            r["owner"],
            size.get(int(r["oid"]), 0),
            _grants(r["owner"], r["grants"]),
        )
        for r in conn.execute(load("large_objects")).fetchall()
    }


def _grants(owner: str, value: Any) -> tuple[Grant, ...]:
    """The privileges of an object; NULL is the owner's default, as acldefault() has them."""
    if value is None:
        return tuple((owner, p, False) for p in PRIVILEGES)
    items = json.loads(value) if isinstance(value, str) else value
    return tuple((g, p, bool(o)) for g, p, o in items)


def roles(conn: Connection) -> set[str]:
    """The roles that own or are granted a large object of the current database."""
    return {r["role"] for r in conn.execute(load("large_object_roles")).fetchall()}


def missing_roles(source: Connection, target: Connection) -> list[str]:
    """The roles the source's large objects name that the target server lacks."""
    wanted = sorted(roles(source))
    if not wanted:
        return []
    rows = target.execute(
        sql.SQL("SELECT rolname FROM pg_catalog.pg_roles WHERE rolname = ANY(%s)"), (wanted,)
    ).fetchall()
    return sorted(set(wanted) - {r["rolname"] for r in rows})


def digests(conn: Connection, objects: Sequence[LargeObject]) -> dict[int, str]:
    """A digest of each object's bytes, computed by the server in chunks."""
    if not objects:
        return {}
    rows = conn.execute(
        load("large_object_digests"),
        {"oids": [o.oid for o in objects], "sizes": [o.size for o in objects], "chunk": CHUNK},
    ).fetchall()
    return {int(r["oid"]): r["digest"] for r in rows}


def compare(source: Connection, target: Connection) -> Work:
    """What the target lacks of the source's large objects, and what it has too many."""
    wanted, present = listing(source), listing(target)
    # Only objects of the same size can hold the same bytes: the others need no digest.
    alike = [o for oid, o in wanted.items() if oid in present and present[oid].size == o.size]
    theirs = digests(target, alike)
    ours = digests(source, [o for o in alike if o.oid in theirs])
    equal = {oid for oid, digest in ours.items() if theirs.get(oid) == digest}
    fix = [
        o
        for o in wanted.values()
        if o.oid in equal and (present[o.oid].owner, present[o.oid].grants) != (o.owner, o.grants)
    ]
    return Work(
        copy=tuple(o for oid, o in wanted.items() if oid not in equal),
        fix=tuple(fix),
        delete=tuple(sorted(set(present) - set(wanted))),
        unchanged=len(equal) - len(fix),
        present=present,
    )


def is_copied(source: Connection, target: Connection) -> bool:
    """The target holds exactly the source's large objects: bytes, owners and privileges."""
    return compare(source, target).done


def copy(
    source: Connection, target: Connection, *, where: str, dry_run: bool
) -> tuple[Change, ...]:
    """Make the target's large objects those of the source; returns what was done."""
    started = time.monotonic()
    missing = missing_roles(source, target)
    if missing:
        raise PreconditionFailed(
            "roles that own or are granted large objects do not exist on the target: "
            + ", ".join(missing),
            hint="create them on the target, then switch again: "
            + " ".join(statement("CREATE ROLE {};", r) for r in missing),
        )
    work = compare(source, target)
    size = sum(o.size for o in work.copy)
    if dry_run:
        return (
            Change(
                where,
                f"large objects: copy {len(work.copy)} ({size} bytes), set the owner or "
                f"privileges of {len(work.fix)}, delete {len(work.delete)}, "
                f"{work.unchanged} unchanged",
            ),
        )
    if work.delete:
        target.execute(
            sql.SQL("SELECT count(pg_catalog.lo_unlink(o.oid)) FROM unnest(%s::oid[]) AS o(oid)"),
            (list(work.delete),),
        )
    current_user = _current_user(target)
    for batch in _batches(work.copy):
        if len(batch) == 1 and batch[0].size > CHUNK:
            _copy_in_chunks(source, target, batch[0], work.present, current_user)
        else:
            _copy_together(source, target, batch, work.present, current_user)
    for obj in work.fix:
        was = work.present[obj.oid]
        with target.transaction(), _pipeline(target):
            for command in metadata(obj, owner=was.owner, grants=was.grants):
                target.execute(command)
    ms = (time.monotonic() - started) * 1000
    log.info(
        "large objects of %s: %d copied (%d bytes), %d set, %d deleted, %d unchanged in %.0f ms",
        where,
        len(work.copy),
        size,
        len(work.fix),
        len(work.delete),
        work.unchanged,
        ms,
    )
    return (
        Change(
            where,
            f"large objects: {len(work.copy)} copied ({size} bytes), {len(work.fix)} owners or "
            f"privileges set, {len(work.delete)} deleted, {work.unchanged} unchanged "
            f"in {ms:.0f} ms",
        ),
    )


def _current_user(conn: Connection) -> str:
    row = conn.execute(sql.SQL("SELECT current_user AS name")).fetchone()
    assert row is not None
    return str(row["name"])


def _pipeline(conn: Connection) -> AbstractContextManager[Any]:
    """Statements sent without waiting for each answer, where libpq can (version 14 on)."""
    return conn.pipeline() if psycopg.Pipeline.is_supported() else nullcontext()


def _batches(objects: Iterable[LargeObject]) -> Iterator[list[LargeObject]]:
    """A large object alone; small ones together, up to BATCH_BYTES and BATCH_OBJECTS."""
    batch: list[LargeObject] = []
    size = 0
    for obj in objects:
        if obj.size > CHUNK:
            yield [obj]
            continue
        if batch and (size + obj.size > BATCH_BYTES or len(batch) >= BATCH_OBJECTS):
            yield batch
            batch, size = [], 0
        batch.append(obj)
        size += obj.size
    if batch:
        yield batch


def _fresh(obj: LargeObject, creator: str) -> list[sql.Composed]:
    """Owner and privileges for an object just created by `creator` (so with the default ACL)."""
    default = tuple((creator, p, False) for p in PRIVILEGES)
    return metadata(obj, owner=creator, grants=default)


def _copy_together(
    source: Connection,
    target: Connection,
    batch: list[LargeObject],
    present: dict[int, LargeObject],
    creator: str,
) -> None:
    """Small objects: read in one round trip, written in one transaction."""
    oids = [o.oid for o in batch]
    rows = source.execute(
        sql.SQL(
            "SELECT o.oid::bigint AS oid, pg_catalog.lo_get(o.oid) AS data "
            "FROM unnest(%s::oid[]) AS o(oid)"
        ),
        (oids,),
        binary=True,  # bytes as they are, not hex: half the traffic, no decoding
    ).fetchall()
    data = {int(r["oid"]): bytes(r["data"]) for r in rows}
    owners: dict[str, list[LargeObject]] = {}
    for obj in batch:
        owners.setdefault(obj.owner, []).append(obj)
    with target.transaction():
        _unlink(target, [oid for oid in oids if oid in present])
        for owner, objects in owners.items():
            # Created as their owner, they need no ALTER ... OWNER each (a catalog update
            # apiece: 20 times slower for many small objects). The transaction's end
            # undoes the SET LOCAL.
            if owner != creator:
                target.execute(sql.SQL("SET LOCAL ROLE {}").format(sql.Identifier(owner)))
            target.execute(
                sql.SQL(
                    "SELECT count(pg_catalog.lo_from_bytea(o.oid, o.data)) "
                    "FROM unnest(%s::oid[], %b::bytea[]) AS o(oid, data)"
                ),
                ([o.oid for o in objects], [data[o.oid] for o in objects]),
            )
            with _pipeline(target):
                for obj in objects:
                    for command in _fresh(obj, owner):
                        target.execute(command)
            if owner != creator:
                target.execute(sql.SQL("RESET ROLE"))


def _copy_in_chunks(
    source: Connection,
    target: Connection,
    obj: LargeObject,
    present: dict[int, LargeObject],
    creator: str,
) -> None:
    """One large object, CHUNK bytes at a time, in one transaction on the target.

    The next chunk is read from the source while the target writes this one
    (the source connection is the reading thread's alone meanwhile).
    """

    def read(offset: int) -> bytes:
        row = source.execute(
            sql.SQL("SELECT pg_catalog.lo_get(%s::oid, %s, %s) AS data"),
            (obj.oid, offset, CHUNK),
            binary=True,
        ).fetchone()
        return bytes(row["data"]) if row else b""

    with target.transaction(), ThreadPoolExecutor(1, thread_name_prefix="lo-read") as reader:
        _unlink(target, [obj.oid] if obj.oid in present else [])
        target.execute(sql.SQL("SELECT pg_catalog.lo_create(%s::oid)"), (obj.oid,))
        offset, pending = 0, reader.submit(read, 0)
        while chunk := pending.result():
            if offset + len(chunk) < obj.size:
                pending = reader.submit(read, offset + len(chunk))
            else:
                pending = reader.submit(bytes)  # the last chunk: nothing more to read
            target.execute(
                sql.SQL("SELECT pg_catalog.lo_put(%s::oid, %s, %b)"), (obj.oid, offset, chunk)
            )
            offset += len(chunk)
        for command in _fresh(obj, creator):
            target.execute(command)


def _unlink(conn: Connection, oids: list[int]) -> None:
    if oids:
        conn.execute(
            sql.SQL("SELECT count(pg_catalog.lo_unlink(o.oid)) FROM unnest(%s::oid[]) AS o(oid)"),
            (oids,),
        )


def _grantee(name: str) -> sql.Composable:
    return sql.SQL("PUBLIC") if name == "" else sql.Identifier(name)


def metadata(obj: LargeObject, *, owner: str, grants: tuple[Grant, ...]) -> list[sql.Composed]:
    """The statements that take an object from `owner` and `grants` to its own.

    A new owner takes the old one's privileges over (as ALTER ... OWNER does);
    privileges that the object only lacks are granted; others are revoked from
    everyone named and granted again as the source has them, in its order, so
    both ACLs read alike (a superuser grants as the owner).
    """
    oid = sql.Literal(obj.oid)
    commands: list[sql.Composed] = []
    if owner != obj.owner:
        commands.append(
            sql.SQL("ALTER LARGE OBJECT {} OWNER TO {}").format(oid, sql.Identifier(obj.owner))
        )
        grants = tuple(dict.fromkeys((obj.owner if g == owner else g, p, o) for g, p, o in grants))
    if grants == obj.grants:
        return commands
    missing = obj.grants[len(grants) :]
    if obj.grants[: len(grants)] != grants:  # not only some to add: all of them again
        everyone = sorted({g for g, _, _ in (*grants, *obj.grants)} | {obj.owner})
        commands.append(
            sql.SQL("REVOKE ALL ON LARGE OBJECT {} FROM {} CASCADE").format(
                oid, sql.SQL(", ").join(_grantee(g) for g in everyone)
            )
        )
        missing = obj.grants
    grouped: dict[tuple[str, bool], list[str]] = {}
    for grantee, privilege, grantable in missing:
        if privilege in PRIVILEGES:
            grouped.setdefault((grantee, grantable), []).append(privilege)
    for (grantee, grantable), privileges in grouped.items():
        commands.append(
            sql.SQL("GRANT {} ON LARGE OBJECT {} TO {}{}").format(
                sql.SQL(", ").join(PRIVILEGES[p] for p in privileges),
                oid,
                _grantee(grantee),
                sql.SQL(" WITH GRANT OPTION") if grantable else sql.SQL(""),
            )
        )
    return commands
