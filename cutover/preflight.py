"""`cutover check`: the read-only preflight.

It runs every check against the real servers and never stops at the first
problem. Each finding is OK, WARN (the move works, but read this) or FAIL (a
blocker), with a hint and, where one exists, the exact statement to run.
Nothing here changes a server.
"""

from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any

from cutover.pg import catalog, pglogical
from cutover.pg.connect import Connection, Pool
from cutover.pg.ident import quote, statement
from cutover.plan import Engine, Plan

MIN_SOURCE_VERSION = 100000  # logical replication appeared in PostgreSQL 10
SUBSCRIPTION_ROLE_VERSION = 160000  # pg_create_subscription appeared in PostgreSQL 16
SYNC_WORKERS = 2  # max_sync_workers_per_subscription's default: tables copied at once


def _count(n: int, noun: str) -> str:
    """`1 table`, `2 tables`."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class Status(StrEnum):
    """The verdict of one check."""

    OK = "OK"
    WARN = "WARN"
    FAIL = "FAIL"


@dataclass(frozen=True)
class Finding:
    """What one check found, where, and how to fix it."""

    check: str
    scope: str
    status: Status
    detail: str
    hint: str = ""
    fix: tuple[str, ...] = ()


@dataclass(frozen=True)
class Report:
    """Every finding of a preflight run."""

    findings: tuple[Finding, ...]

    @property
    def blockers(self) -> list[Finding]:
        """The findings that stop a move."""
        return [f for f in self.findings if f.status is Status.FAIL]

    @property
    def warnings(self) -> list[Finding]:
        """The findings to read before a move."""
        return [f for f in self.findings if f.status is Status.WARN]

    @property
    def ready(self) -> bool:
        """No blocker."""
        return not self.blockers

    def to_dict(self) -> dict[str, Any]:
        """The JSON form."""
        return {
            "ready": self.ready,
            "blockers": len(self.blockers),
            "warnings": len(self.warnings),
            "findings": [
                {**asdict(f), "status": f.status.value, "fix": list(f.fix)} for f in self.findings
            ],
        }


def run(plan: Plan, pool: Pool) -> Report:
    """Every check of the plan against the servers."""
    source, target = pool.get("source"), pool.get("target")
    findings: list[Finding] = []
    source_version = catalog.server_version(source)
    findings += _versions(source_version, catalog.server_version(target))
    findings += _source_settings(plan, source)
    findings += _slots(plan, source)
    findings += _target_settings(plan, target)
    findings += _fallback(plan, source, target)
    if plan.engine is Engine.PGLOGICAL:
        findings += _pglogical(plan, source, target)
    findings += _source_role(plan, source)
    present_on_source = catalog.existing_databases(source, plan.databases)
    present_on_target = catalog.existing_databases(target, plan.databases)
    findings += _target_role(plan, target, present_on_target)
    target_extensions = catalog.available_extensions(target)
    for db in plan.databases:
        scope = f"source/{db}"
        if db not in present_on_source:
            findings.append(
                Finding(
                    "database",
                    scope,
                    Status.FAIL,
                    f"database {quote(db)} does not exist on the source",
                    "check databases: in the plan",
                )
            )
            continue
        conn = pool.get("source", db)
        findings += _source_database(plan, conn, scope, target_extensions)
        if db in present_on_target:
            findings += _target_database(plan, pool.get("target", db), f"target/{db}")
    return Report(tuple(findings))


def _versions(source: int, target: int) -> Iterator[Finding]:
    def major(v: int) -> int:
        return v // 10000

    if source < MIN_SOURCE_VERSION:
        yield Finding(
            "version",
            "source",
            Status.FAIL,
            f"PostgreSQL {major(source)} has no logical replication",
            "upgrade the source to PostgreSQL 10 or later first",
        )
    else:
        yield Finding("version", "source", Status.OK, f"PostgreSQL {major(source)} ({source})")
    if major(target) < major(source):
        yield Finding(
            "version",
            "target",
            Status.FAIL,
            f"the target (PostgreSQL {major(target)}) is older than the source "
            f"(PostgreSQL {major(source)})",
            "a move goes to the same or a newer major version",
        )
    else:
        yield Finding("version", "target", Status.OK, f"PostgreSQL {major(target)} ({target})")


def _setting_finding(
    name: str, scope: str, have: int, need: int, *, why: str, restart: bool = True
) -> Finding:
    if have >= need:
        return Finding(name, scope, Status.OK, f"{name} = {have} (needs {need})")
    return Finding(
        name,
        scope,
        Status.FAIL,
        f"{name} = {have}, the move needs at least {need} ({why})",
        "takes effect after a restart" if restart else "reload the configuration",
        (f"ALTER SYSTEM SET {name} = {need};",),
    )


def _source_settings(plan: Plan, conn: Connection) -> Iterator[Finding]:
    values = catalog.settings(conn, ["wal_level", "max_replication_slots", "max_wal_senders"])
    slots, senders = catalog.replication_in_use(conn, excluding=f"cutover_{plan.move}_")
    # Each subscription holds a slot and a sender, and so does each table it copies at once.
    streams = len(plan.databases) * (1 + SYNC_WORKERS)
    if values.get("wal_level") == "logical":
        yield Finding("wal_level", "source", Status.OK, "wal_level = logical")
    else:
        yield Finding(
            "wal_level",
            "source",
            Status.FAIL,
            f"wal_level = {values.get('wal_level')}: logical decoding is off",
            "`cutover prepare --restart` sets it and restarts the server, the one downtime "
            "of a move; on Cloud SQL set the flag cloudsql.logical_decoding=on",
            ("ALTER SYSTEM SET wal_level = 'logical';",),
        )
    yield _setting_finding(
        "max_replication_slots",
        "source",
        int(values["max_replication_slots"]),
        slots + streams,
        why=f"{slots} slots exist, {streams} more for this move and its table copies",
    )
    yield _setting_finding(
        "max_wal_senders",
        "source",
        int(values["max_wal_senders"]),
        senders + streams,
        why=f"{senders} senders run, {streams} more for this move and its table copies",
    )


def _slots(plan: Plan, conn: Connection) -> Iterator[Finding]:
    """The move's own slots: how much WAL they pin, and whether they are about to be lost."""
    for slot in catalog.move_slots(conn, prefix=f"cutover_{plan.move}_"):
        retained = f"{slot.retained_bytes / 1024**2:.1f} MB of WAL retained"
        if slot.wal_status == "lost":
            yield Finding(
                "slot",
                "source",
                Status.FAIL,
                f"slot {slot.name} was invalidated: its subscriber can never catch up",
                "drop the subscription and start again (`cutover cleanup`, then prepare/start)",
            )
        elif slot.wal_status == "unreserved" or (
            slot.safe_wal_size is not None and slot.safe_wal_size < slot.retained_bytes
        ):
            yield Finding(
                "slot",
                "source",
                Status.WARN,
                f"slot {slot.name}: {retained}, close to max_slot_wal_keep_size",
                "the subscriber lags: find out why (`cutover status`) before the slot is lost, "
                "or raise max_slot_wal_keep_size",
            )
        else:
            yield Finding("slot", "source", Status.OK, f"slot {slot.name}: {retained}")


def fallback_problems(plan: Plan, source: Connection, target: Connection) -> list[str]:
    """Why `switch --keep-fallback` could not replicate back to the source (empty: it can)."""
    needed = len(plan.databases)
    settings = catalog.settings(target, ["wal_level", "max_replication_slots", "max_wal_senders"])
    slots, senders = catalog.replication_in_use(target)
    workers = catalog.settings(source, ["max_logical_replication_workers"])
    problems = []
    if settings.get("wal_level") != "logical":
        problems.append(f"the target's wal_level is {settings.get('wal_level')}")
    if int(settings["max_replication_slots"]) - slots < needed:
        problems.append("the target has no free replication slot")
    if int(settings["max_wal_senders"]) - senders < needed:
        problems.append("the target has no free WAL sender")
    if int(workers["max_logical_replication_workers"]) < needed:
        problems.append("the source's max_logical_replication_workers is too low")
    return problems


def _fallback(plan: Plan, source: Connection, target: Connection) -> Iterator[Finding]:
    problems = fallback_problems(plan, source, target)
    if problems:
        yield Finding(
            "fallback",
            "target",
            Status.WARN,
            "switch --keep-fallback would be refused: " + "; ".join(problems),
            "only needed to keep a way back (cutover rollback); the settings need a restart",
        )
    else:
        yield Finding("fallback", "target", Status.OK, "switch --keep-fallback is possible")


def _pglogical(plan: Plan, source: Connection, target: Connection) -> Iterator[Finding]:
    """What the pglogical engine needs of both servers, each with the statement that fixes it."""
    role = f"cutover_{plan.move}"
    for side, conn in (("source", source), ("target", target)):
        names = ["shared_preload_libraries", "track_commit_timestamp", "max_worker_processes"]
        values = catalog.settings(conn, names)
        preload = [v.strip() for v in values["shared_preload_libraries"].split(",") if v.strip()]
        if "pglogical" in preload:
            yield Finding("pglogical", side, Status.OK, "pglogical is preloaded")
        else:
            wanted = ", ".join([*preload, "pglogical"])
            yield Finding(
                "pglogical",
                side,
                Status.FAIL,
                "pglogical is not in shared_preload_libraries",
                "takes effect after a restart; the package is postgresql-<version>-pglogical; "
                "on Cloud SQL set the flag cloudsql.enable_pglogical=on",
                (f"ALTER SYSTEM SET shared_preload_libraries = '{wanted}';",),
            )
        if not pglogical.extension_available(conn):
            yield Finding(
                "pglogical",
                side,
                Status.FAIL,
                "the pglogical extension is not installed on this server",
                "install the package postgresql-<version>-pglogical",
            )
        if values["track_commit_timestamp"] != "on":
            yield Finding(
                "track_commit_timestamp",
                side,
                Status.WARN,
                "track_commit_timestamp is off",
                "pglogical records no commit time, so its conflict resolution and its log "
                "cannot tell which change is newer; takes effect after a restart",
                ("ALTER SYSTEM SET track_commit_timestamp = on;",),
            )
        # pglogical's supervisor, one manager per database, the apply workers and a copy.
        workers = 2 + catalog.connectable_databases(conn) + 2 * len(plan.databases)
        yield replace(
            _setting_finding(
                "max_worker_processes",
                side,
                int(values["max_worker_processes"]),
                workers,
                why="pglogical's supervisor, a manager per database, apply and copy workers",
            ),
            check="pglogical_workers",
        )
        admin = catalog.current_role(conn)
        if not admin.superuser and not catalog.is_member_of(conn, "cloudsqlsuperuser"):
            yield Finding(
                "privileges",
                side,
                Status.FAIL,
                f"{admin.name} may not create the pglogical extension nor grant what its "
                "roles need",
                f"cutover grants {role} REPLICATION, SELECT on the tables and USAGE and "
                "SELECT on schema pglogical on the source; INSERT on the tables, SET on "
                "session_replication_role and the replication-origin functions on the target",
                (statement("ALTER ROLE {} SUPERUSER;", admin.name),),
            )


def _target_settings(plan: Plan, conn: Connection) -> Iterator[Finding]:
    names = ["max_logical_replication_workers", "max_worker_processes"]
    values = {k: int(v) for k, v in catalog.settings(conn, names).items()}
    apply_workers = len(plan.databases)
    yield _setting_finding(
        "max_logical_replication_workers",
        "target",
        values["max_logical_replication_workers"],
        apply_workers + 1,
        why=f"{apply_workers} apply workers and at least one table copy at a time",
    )
    # The launcher and the other background workers come out of the same pool.
    yield _setting_finding(
        "max_worker_processes",
        "target",
        values["max_worker_processes"],
        apply_workers + SYNC_WORKERS + 1,
        why="the replication launcher, apply and table-copy workers",
    )


def _source_role(plan: Plan, conn: Connection) -> Iterator[Finding]:
    role = catalog.current_role(conn)
    if role.superuser:
        yield Finding("privileges", "source", Status.OK, f"{role.name} is a superuser")
        return
    # Cloud SQL and RDS give the replication right through a role, not the attribute.
    if role.replication or any(
        catalog.is_member_of(conn, r) for r in ("cloudsqlsuperuser", "rds_replication")
    ):
        yield Finding("privileges", "source", Status.OK, f"{role.name} may replicate")
    else:
        yield Finding(
            "privileges",
            "source",
            Status.FAIL,
            f"{role.name} has no REPLICATION attribute",
            "logical replication connects as this role",
            (statement("ALTER ROLE {} REPLICATION;", role.name),),
        )


def _target_role(plan: Plan, conn: Connection, present: set[str]) -> Iterator[Finding]:
    role = catalog.current_role(conn)
    if role.superuser:
        yield Finding("privileges", "target", Status.OK, f"{role.name} is a superuser")
        return
    version = catalog.server_version(conn)
    if version >= SUBSCRIPTION_ROLE_VERSION:
        if not catalog.is_member_of(conn, "pg_create_subscription"):
            yield Finding(
                "privileges",
                "target",
                Status.FAIL,
                f"{role.name} may not create subscriptions",
                "",
                (statement("GRANT pg_create_subscription TO {};", role.name),),
            )
    elif not catalog.is_member_of(conn, "cloudsqlsuperuser"):
        yield Finding(
            "privileges",
            "target",
            Status.FAIL,
            f"{role.name} is not a superuser: on PostgreSQL {version // 10000} only a "
            "superuser may create subscriptions",
            "use a superuser for the target, or a target on PostgreSQL 16 or later",
            (statement("ALTER ROLE {} SUPERUSER;", role.name),),
        )
    missing = [db for db in plan.databases if db not in present]
    if missing and not role.createdb:
        yield Finding(
            "privileges",
            "target",
            Status.FAIL,
            f"{role.name} may not create the missing databases {', '.join(missing)}",
            "prepare creates each database on the target",
            (statement("ALTER ROLE {} CREATEDB;", role.name),),
        )


def _source_database(
    plan: Plan, conn: Connection, scope: str, target_extensions: set[str]
) -> Iterator[Finding]:
    relations = catalog.relations(conn)
    tables = [r for r in relations if r.is_table]
    yield from _database_privileges(plan, conn, scope, relations)
    yield from _replica_identity(plan, scope, tables)
    yield from _not_carried(conn, scope, relations)
    yield from _extensions(conn, scope, target_extensions)
    yield from _orphans(conn, scope)
    sequences = [r for r in relations if r.kind == "S"]
    if sequences:
        yield Finding(
            "sequences",
            scope,
            Status.OK,
            f"{_count(len(sequences), 'sequence')}: values copied at the switch",
        )


def _database_privileges(
    plan: Plan, conn: Connection, scope: str, relations: list[catalog.Relation]
) -> Iterator[Finding]:
    role = catalog.current_role(conn)
    if role.superuser:
        return
    fixes: list[str] = []
    db = str(conn.info.dbname)
    granted = catalog.database_privileges(conn)
    if not (granted["CONNECT"] and granted["CREATE"]):
        fixes.append(statement("GRANT CONNECT, CREATE ON DATABASE {} TO {};", db, role.name))
    carried = [r for r in relations if r.kind in ("r", "S")]
    by_schema: dict[str, list[catalog.Relation]] = defaultdict(list)
    for r in carried:
        by_schema[r.schema].append(r)
    for schema, members in by_schema.items():
        if not all(r.schema_usage for r in members):
            fixes.append(statement("GRANT USAGE ON SCHEMA {} TO {};", schema, role.name))
        if any(r.kind == "r" and not r.can_select for r in members):
            fixes.append(
                statement("GRANT SELECT ON ALL TABLES IN SCHEMA {} TO {};", schema, role.name)
            )
        if any(r.kind == "S" and not r.can_select for r in members):
            fixes.append(
                statement("GRANT SELECT ON ALL SEQUENCES IN SCHEMA {} TO {};", schema, role.name)
            )
    # Before PostgreSQL 16, a publication may only name tables its creator owns.
    owners = sorted({r.owner for r in carried if r.kind == "r" and not r.acts_as_owner})
    fixes += [statement("GRANT {} TO {};", owner, role.name) for owner in owners]
    if fixes:
        yield Finding(
            "privileges",
            scope,
            Status.FAIL,
            f"{role.name} lacks {_count(len(fixes), 'grant')} the move needs",
            "run these as the owner or a superuser, then check again",
            tuple(fixes),
        )
    else:
        yield Finding("privileges", scope, Status.OK, f"{role.name} has every grant the move needs")


def _replica_identity(plan: Plan, scope: str, tables: list[catalog.Relation]) -> Iterator[Finding]:
    permanent = [t for t in tables if t.persistence == "p"]
    missing = [t for t in permanent if not t.has_usable_identity and t.replica_identity != "f"]
    full = [t for t in permanent if t.replica_identity == "f" and not t.has_primary_key]
    if plan.engine is Engine.PGLOGICAL:
        # pglogical has no REPLICA IDENTITY FULL: one table without a key fails the whole set.
        missing, full = missing + full, []
    # prepare numbers the rows of a table with the default identity (see `cutover backfill`).
    chosen = plan.backfill.tables
    keyed = [
        t
        for t in missing
        if t.replica_identity == "d" and (chosen is None or (t.schema, t.name) in chosen)
    ]
    missing = [t for t in missing if t not in keyed]
    if keyed and plan.engine is Engine.PGLOGICAL:
        yield Finding(
            "replica_identity",
            scope,
            Status.FAIL,
            f"{_count(len(keyed), 'table')} without a primary key, which pglogical cannot "
            "carry (one such table makes the whole replication set fail): "
            + ", ".join(t.display for t in keyed),
            f"`cutover backfill` adds one ({plan.backfill.column} bigint, writers not "
            "blocked; `cutover prepare` runs it first); `cutover cleanup` drops it again",
            ("cutover backfill -p <plan>",),
        )
    elif keyed:
        yield Finding(
            "replica_identity",
            scope,
            Status.WARN,
            f"{_count(len(keyed), 'table')} without a primary key, which `cutover prepare` "
            f"adds ({plan.backfill.column} bigint, writers not blocked): "
            + ", ".join(t.display for t in keyed),
            "UPDATE and DELETE need a key to replicate; `cutover cleanup` drops it again",
        )
    if missing:
        fixes = [
            statement("ALTER TABLE {} REPLICA IDENTITY DEFAULT;", (t.schema, t.name))
            for t in missing
            if t.replica_identity == "n"
        ]
        yield Finding(
            "replica_identity",
            scope,
            Status.FAIL,
            f"{_count(len(missing), 'table')} without a primary key or replica identity: "
            + ", ".join(t.display for t in missing),
            "UPDATE and DELETE on them would fail on the source once they are published; "
            "with REPLICA IDENTITY DEFAULT (the fix) `cutover prepare` adds a primary key "
            "without blocking writers, unless backfill.tables leaves them out",
            tuple(fixes),
        )
    if full:
        yield Finding(
            "replica_identity",
            scope,
            Status.WARN,
            f"{_count(len(full), 'table')} with REPLICA IDENTITY FULL: "
            + ", ".join(t.display for t in full),
            "each UPDATE or DELETE scans the table on the target; "
            "`cutover prepare` can add a temporary primary key instead",
        )
    if not missing and not full and not keyed:
        yield Finding(
            "replica_identity",
            scope,
            Status.OK,
            f"{_count(len(permanent), 'table')}, each with a primary key or replica identity",
        )


def _names(relations: Iterable[catalog.Relation]) -> str:
    return ", ".join(r.display for r in relations)


def _not_carried(
    conn: Connection, scope: str, relations: list[catalog.Relation]
) -> Iterator[Finding]:
    unlogged = [r for r in relations if r.kind in ("r", "p") and r.persistence == "u"]
    if unlogged:
        yield Finding(
            "unlogged_tables",
            scope,
            Status.FAIL,
            f"{_count(len(unlogged), 'unlogged table')}, not replicated: {_names(unlogged)}",
            "their rows would be missing on the target; make them logged, or empty them "
            "if they only hold a cache",
            tuple(statement("ALTER TABLE {} SET LOGGED;", (r.schema, r.name)) for r in unlogged),
        )
    large_objects = catalog.large_object_count(conn)
    if large_objects:
        yield Finding(
            "large_objects",
            scope,
            Status.FAIL,
            f"{_count(large_objects, 'large object')}: logical replication does not carry them",
            "store them as bytea, or copy them during the write pause with "
            "pg_dump --large-objects --data-only",
        )
    views = [r for r in relations if r.kind == "m"]
    if views:
        yield Finding(
            "materialized_views",
            scope,
            Status.WARN,
            f"{_count(len(views), 'materialized view')}, not replicated: {_names(views)}",
            "refresh them on the target after the switch",
            tuple(statement("REFRESH MATERIALIZED VIEW {};", (r.schema, r.name)) for r in views),
        )
    foreign = [r for r in relations if r.kind == "f"]
    if foreign:
        yield Finding(
            "foreign_tables",
            scope,
            Status.WARN,
            f"{_count(len(foreign), 'foreign table')}: definitions move, data stays remote: "
            + _names(foreign),
            "make sure the target can reach the foreign servers",
        )
    triggers = catalog.event_triggers(conn)
    if triggers:
        yield Finding(
            "ddl",
            scope,
            Status.WARN,
            f"{_count(len(triggers), 'event trigger')} reacting to DDL: "
            + ", ".join(f"{name} ({event})" for name, event in triggers),
            "DDL is not replicated: apply any schema change during the move on both sides, "
            "target first",
        )


def _extensions(conn: Connection, scope: str, available: set[str]) -> Iterator[Finding]:
    installed = catalog.installed_extensions(conn)
    missing = sorted(set(installed) - available)
    if missing:
        yield Finding(
            "extensions",
            scope,
            Status.FAIL,
            f"{_count(len(missing), 'extension')} not available on the target: "
            + ", ".join(missing),
            "install their packages on the target server (or enable them in its cloud console)",
        )
    elif installed:
        yield Finding(
            "extensions",
            scope,
            Status.OK,
            f"{_count(len(installed), 'extension')}, all available on the target",
        )


def _orphans(conn: Connection, scope: str) -> Iterator[Finding]:
    keys = catalog.foreign_keys(conn)
    broken = [(fk, n) for fk in keys if (n := catalog.count_orphans(conn, fk))]
    for fk, count in broken:
        yield Finding(
            "foreign_key_orphans",
            scope,
            Status.FAIL,
            f"{_count(count, 'row')} of {fk.display} point at no row (constraint {fk.name})",
            "the constraint cannot be created on the target while they exist: "
            "fix or delete them; this query lists them",
            (catalog.orphan_listing(fk),),
        )
    if not broken:
        yield Finding(
            "foreign_key_orphans",
            scope,
            Status.OK,
            f"{_count(len(keys), 'foreign key')}, no row points at nothing",
        )


def _target_database(plan: Plan, conn: Connection, scope: str) -> Iterator[Finding]:
    role = catalog.current_role(conn)
    if role.superuser:
        return
    granted = catalog.database_privileges(conn)
    if not granted["CREATE"]:
        db = str(conn.info.dbname)
        yield Finding(
            "privileges",
            scope,
            Status.FAIL,
            f"{role.name} may not create schemas in {db} on the target",
            "prepare copies the schema into it",
            (statement("GRANT CREATE ON DATABASE {} TO {};", db, role.name),),
        )
