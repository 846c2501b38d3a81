"""`cutover check`: the read-only preflight.

It runs every check against the real servers and never stops at the first
problem. Each finding is OK, WARN (the move works, but read this) or FAIL (a
blocker), with a hint and, where one exists, the exact statement to run.
Nothing here changes a server.
"""

import re
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator
from dataclasses import asdict, dataclass, replace
from enum import StrEnum
from typing import Any

from cutover.pg import (
    barrier,
    catalog,
    copy,
    ddl_guard,
    fence,
    large_objects,
    matviews,
    pglogical,
    replication,
)
from cutover.pg.connect import APPLICATION_NAME, Connection, Pool
from cutover.pg.ident import quote, statement
from cutover.plan import Engine, LargeObjects, Plan

MIN_SOURCE_VERSION = 100000  # logical replication appeared in PostgreSQL 10
SUBSCRIPTION_ROLE_VERSION = 160000  # pg_create_subscription appeared in PostgreSQL 16
SYNC_WORKERS = 2  # max_sync_workers_per_subscription's default: tables copied at once
COPY_JOBS = 2  # start --parallel's default: each job holds a session on both servers
# What a move should leave free for the application: this share of max_connections, at least
# APPLICATION_ROOM_MIN slots.
APPLICATION_ROOM = 0.1
APPLICATION_ROOM_MIN = 5
# The switch's copy of large objects, measured between two lab servers on one machine
# (tests/integration/test_not_carried.py); a network between the servers slows it.
LARGE_OBJECTS_PER_SECOND = 5000.0
LARGE_OBJECT_BYTES_PER_SECOND = 50 * 1024**2
LARGE_OBJECT_PAUSE_SECONDS = 5.0  # a copy longer than this is a WARN: the pause grows


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


def run(plan: Plan, pool: Pool, *, copied: Collection[str] = (), move_id: str = "") -> Report:
    """Every check of the plan against the servers.

    `copied`: the databases whose tables this move has begun to fill on the
    target (the ledger knows), where rows are the move's own. `move_id`: the
    move's identity (see ledger.move_id); objects of the move's name marked with
    another are a second plan's.
    """
    source, target = pool.get("source"), pool.get("target")
    findings: list[Finding] = [
        Finding(
            "move name",
            what.partition(":")[0],
            Status.FAIL,
            f"another move named {plan.move!r} made {what.partition(': ')[2]}",
            replication.OTHER_MOVE_HINT,
        )
        for what in replication.other_moves(pool, plan.move, move_id, plan.databases)
    ]
    source_version = catalog.server_version(source)
    target_version = catalog.server_version(target)
    findings += _versions(source_version, target_version)
    findings += _source_settings(plan, source)
    findings += _slots(plan, source)
    findings += _target_settings(plan, target)
    for side, conn in (("source", source), ("target", target)):
        use = catalog.connection_use(conn, ours=APPLICATION_NAME)
        findings.append(connections_finding(side, use, databases=len(plan.databases)))
    findings += _fallback(plan, pool)
    findings += ENGINE_CHECKS.get(plan.engine, _nothing)(plan, pool, source, target)
    present_on_source = catalog.existing_databases(source, plan.databases)
    fenced = _roles_to_fence(plan, pool, [d for d in plan.databases if d in present_on_source])
    findings += _source_role(plan, source, fenced)
    findings += _ddl_guard(plan, source)
    findings += _fence(plan, fenced)
    present_on_target = catalog.existing_databases(target, plan.databases)
    findings += _target_role(plan, target, present_on_target)
    target_extensions = Extensions(frozenset(catalog.available_extensions(target)), target_version)
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
        with pool.borrow("source", db) as conn:
            findings += _source_database(plan, conn, scope, target_extensions, target=target)
            if db in present_on_target:
                with pool.borrow("target", db) as on_target:
                    findings += _target_database(plan, on_target, f"target/{db}")
                    if db not in copied:
                        findings += _target_rows(conn, on_target, db, f"target/{db}")
    return Report(tuple(findings))


def _roles_to_fence(plan: Plan, pool: Pool, databases: list[str]) -> list[str]:
    """The roles the switch would fence, asked of one database after another: a check of
    many databases holds a session in one at a time (the switch asks them all at once)."""
    keep = [plan.source.user, replication.object_name(plan.move)]
    maintenance = pool.get("source")
    if plan.fence.roles is not None:
        return fence.roles_to_fence(maintenance, [], named=plan.fence.roles, keep=keep)
    found: set[str] = set()
    for db in databases:
        with pool.borrow("source", db) as conn:
            found.update(fence.roles_to_fence(maintenance, [conn], named=None, keep=keep))
    return sorted(found)


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


def move_sessions(databases: int) -> int:
    """The most sessions a move of `databases` holds on a server: its switch's two per
    database and the maintenance database, or start's few (see connections_finding)."""
    return max(2 * databases + 1, 2 + COPY_JOBS)


def largest_move(free: int) -> int:
    """The most databases a move may have to hold no more than `free` sessions (0: none)."""
    return max(0, (free - 1) // 2) if free >= move_sessions(1) else 0


def connections_finding(side: str, use: catalog.ConnectionUse, *, databases: int) -> Finding:
    """Whether the sessions a move holds fit beside the application's on one server.

    Every command holds a session to the server's maintenance database. `prepare`,
    `start` and `cleanup` hold sessions on the database they are at, not the ones
    done or to come; `start` one more per copy job. The switch holds two per database
    (one, and the snapshot its counts compare) from before its pause to its end. The
    exporter (`cutover metrics`) holds its own, one per database and one, for as long
    as it runs. Taking the last slots would make the application's next connection
    fail: that is refused, and a move that leaves it little room (with the exporter
    running too) is a warning.
    """
    needed = move_sessions(databases)
    exporter = databases + 1
    room = max(APPLICATION_ROOM_MIN, int(use.limit * APPLICATION_ROOM))
    left = use.free - needed
    said = (
        f"max_connections = {use.limit}, {use.reserved} reserved for superusers, "
        f"{use.others} in use by others: the move holds up to {needed} "
        f"({databases} database(s), two sessions each in the switch; the maintenance "
        f"database; {COPY_JOBS} copy jobs in start)"
    )
    roomy = largest_move(use.free - room)
    several = (
        f"or move the databases in several moves, one after another, of at most {roomy} "
        "(that many leave the application its room)"
        if roomy
        else "or move the databases in several moves"
    )
    hint = (
        "raise max_connections (it takes a restart), end idle sessions (a pooler helps), "
        f"{several}; `start --parallel N` holds N copy jobs"
    )
    if left < 0:
        return Finding(
            "connections",
            side,
            Status.FAIL,
            f"{said}, {use.free} are free: the application would be refused connections",
            hint,
        )
    if left < room:
        return Finding(
            "connections",
            side,
            Status.WARN,
            f"{said}; {left} would stay free for the application (less than {room})",
            hint,
        )
    if left - exporter < room:
        return Finding(
            "connections",
            side,
            Status.WARN,
            f"{said}; with the exporter running (cutover metrics, {exporter} more) "
            f"{left - exporter} would stay free for the application (less than {room})",
            hint + "; or run the exporter only while you watch",
        )
    return Finding(
        "connections",
        side,
        Status.OK,
        f"{said}; {left} stay free, {left - exporter} with the exporter running",
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
                "`cutover start --recopy` drops the subscription and the slot, empties the "
                "target's tables and copies them anew",
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


ONE_WAY = (
    "the dms engine replicates one way: DMS has no job from the new primary back to the "
    "source, so there is no `cutover rollback` after its switch"
)


def fallback_hint(plan: Plan) -> str:
    """What to do when `switch --keep-fallback` is refused."""
    if plan.engine is Engine.DMS:
        return (
            "switch without --keep-fallback; the way back is the source itself (left as it "
            "was, fenced) and the backup of it that prepare took (docs/dms.md)"
        )
    return "fix the settings (they need a restart), or switch without --keep-fallback"


def fallback_problems(plan: Plan, pool: Pool) -> list[str]:
    """Why `switch --keep-fallback` could not replicate back to the source (empty: it can)."""
    if plan.engine is Engine.DMS:
        return [ONE_WAY]
    source, target = pool.get("source"), pool.get("target")
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


def _fallback(plan: Plan, pool: Pool) -> Iterator[Finding]:
    problems = fallback_problems(plan, pool)
    if problems:
        yield Finding(
            "fallback",
            "target",
            Status.WARN,
            "switch --keep-fallback would be refused: " + "; ".join(problems),
            "only needed to keep a way back (cutover rollback); " + fallback_hint(plan),
        )
    else:
        yield Finding("fallback", "target", Status.OK, "switch --keep-fallback is possible")


def _pglogical_source_grants(plan: Plan, pool: Pool, user: str) -> Iterator[Finding]:
    """What a superuser must do once per database for a source user that is none.

    pglogical's extension is untrusted, and its functions write its catalog as the
    caller: on PostgreSQL (Cloud SQL's admin excepted) only a superuser can create
    it and give the plan's user its tables.
    """
    present = catalog.existing_databases(pool.get("source"), plan.databases)
    for db in [d for d in plan.databases if d in present]:
        with pool.borrow("source", db) as conn:
            usable = pglogical.usable_by(conn, user)
        if usable:
            yield Finding("privileges", f"source/{db}", Status.OK, f"{user} may use pglogical")
            continue
        yield Finding(
            "privileges",
            f"source/{db}",
            Status.FAIL,
            f"{user} is no superuser: pglogical's extension and catalog need one first",
            f"run these as a superuser in database {quote(db)}, then check again",
            (
                statement("CREATE EXTENSION IF NOT EXISTS {};", pglogical.EXTENSION),
                statement("GRANT USAGE ON SCHEMA {} TO PUBLIC;", pglogical.SCHEMA),
                statement("GRANT ALL ON ALL TABLES IN SCHEMA {} TO {};", pglogical.SCHEMA, user),
            ),
        )


def _pglogical(plan: Plan, pool: Pool, source: Connection, target: Connection) -> Iterator[Finding]:
    """What the pglogical engine needs of both servers, each with the statement that fixes it."""
    role = f"cutover_{plan.move}"
    for side, conn in (("source", source), ("target", target)):
        names = ["shared_preload_libraries", "track_commit_timestamp", "max_worker_processes"]
        values = catalog.settings(conn, names)
        preload = [
            v.strip() for v in values.get("shared_preload_libraries", "").split(",") if v.strip()
        ]
        if "shared_preload_libraries" not in values:
            # Only superusers and pg_read_all_settings see it.
            user = catalog.current_role(conn).name
            yield Finding(
                "pglogical",
                side,
                Status.WARN,
                f"{user} may not read shared_preload_libraries: whether pglogical is "
                "preloaded is unknown",
                "start fails with a clear error if it is not",
                (statement("GRANT pg_read_all_settings TO {};", user),),
            )
        elif "pglogical" in preload:
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
        if side == "source" and not admin.superuser:
            yield from _pglogical_source_grants(plan, pool, admin.name)
        elif not admin.superuser and not catalog.is_member_of(conn, "cloudsqlsuperuser"):
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
    ours = replication.object_name(plan.move)  # and its way back's
    others = catalog.enabled_subscriptions(conn, excluding=[ours, f"{ours}_back"])
    yield _setting_finding(
        "max_logical_replication_workers",
        "target",
        values["max_logical_replication_workers"],
        others + apply_workers + 1,
        why=f"{apply_workers} apply workers and at least one table copy at a time"
        + (f", beside {others} other enabled subscriptions' apply workers" if others else ""),
    )
    # The launcher and the other background workers come out of the same pool.
    yield _setting_finding(
        "max_worker_processes",
        "target",
        values["max_worker_processes"],
        apply_workers + SYNC_WORKERS + 1,
        why="the replication launcher, apply and table-copy workers",
    )


def _source_role(plan: Plan, conn: Connection, fenced: list[str]) -> Iterator[Finding]:
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
    yield from _fence_privileges(conn, role, fenced)


def _ddl_guard(plan: Plan, conn: Connection) -> Iterator[Finding]:
    """With `ddl_guard: true`, whether the source user may create the guard's event triggers."""
    if not plan.ddl_guard:
        return
    role = catalog.current_role(conn)
    if catalog.may_create_event_triggers(conn):
        yield Finding(
            "ddl_guard",
            "source",
            Status.OK,
            "prepare puts event triggers on the source that refuse DDL until cleanup",
        )
        return
    yield Finding(
        "ddl_guard",
        "source",
        Status.FAIL,
        f"{role.name} is no superuser: it may not create the event triggers of ddl_guard: true",
        ddl_guard.PRIVILEGE_HINT,
        (statement("ALTER ROLE {} SUPERUSER;", role.name),),
    )


def _fence_privileges(conn: Connection, role: catalog.Role, fenced: list[str]) -> Iterator[Finding]:
    """What a source user that is no superuser needs for the switch's fence."""
    fixes: list[str] = []
    if not role.createrole:  # ALTER ROLE ... NOLOGIN
        fixes.append(statement("ALTER ROLE {} CREATEROLE;", role.name))
    strangers = [r for r in fenced if not catalog.is_member_of(conn, r)]
    if strangers and not catalog.is_member_of(conn, "pg_signal_backend"):
        fixes.append(statement("GRANT pg_signal_backend TO {};", role.name))
    if not catalog.is_member_of(conn, "pg_read_all_stats"):
        # Without it pg_stat_activity hides other roles' transactions: the check that
        # nobody writes after the fence would see nothing.
        fixes.append(statement("GRANT pg_read_all_stats TO {};", role.name))
    if fixes:
        yield Finding(
            "privileges",
            "source",
            Status.FAIL,
            f"{role.name} is no superuser and lacks what the switch's fence needs",
            "the fence takes LOGIN from the application's roles, ends their sessions"
            + (f" ({', '.join(strangers)}: not roles it is a member of)" if strangers else "")
            + " and must see every session's transaction; run these as a superuser "
            "(on a managed service, its admin user)",
            tuple(fixes),
        )
    else:
        yield Finding(
            "privileges",
            "source",
            Status.OK,
            f"{role.name} may fence {_count(len(fenced), 'role')} and see every session",
        )


def _fence(plan: Plan, fenced: list[str]) -> Iterator[Finding]:
    """Who the switch's fence takes LOGIN from, and who it leaves alone."""
    if plan.fence.roles is not None:
        spared = sorted(set(plan.fence.roles) - set(fenced))
        if spared:
            yield Finding(
                "fence",
                "source",
                Status.WARN,
                "fence.roles names roles the fence leaves alone: " + ", ".join(spared),
                "only existing login roles are fenced, never cutover's own, nor a superuser "
                "unless the plan's user is one; a superuser that writes after the fence "
                "aborts the switch",
            )
        whom = "as fence.roles names"
    else:
        whom = "those that may write to the moved tables; superusers are never fenced"
    if fenced:
        detail = f"the switch fences {_count(len(fenced), 'role')} ({whom}): {', '.join(fenced)}"
    else:
        detail = f"the switch fences no role ({whom})"
    yield Finding("fence", "source", Status.OK, detail)


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
    plan: Plan, conn: Connection, scope: str, target_extensions: "Extensions", *, target: Connection
) -> Iterator[Finding]:
    relations = catalog.relations(conn)
    tables = [r for r in relations if r.is_table]
    yield from _database_privileges(plan, conn, scope, relations)
    yield from _replica_identity(plan, scope, tables)
    yield from _not_carried(plan, conn, scope, relations, target=target)
    yield from _extensions(conn, scope, target_extensions)
    yield from _orphans(conn, scope, relations)
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
    plan: Plan,
    conn: Connection,
    scope: str,
    relations: list[catalog.Relation],
    *,
    target: Connection,
) -> Iterator[Finding]:
    unlogged = [r for r in relations if r.kind in ("r", "p") and r.persistence == "u"]
    if unlogged:
        yield Finding(
            "unlogged_tables",
            scope,
            Status.WARN,
            f"{_count(len(unlogged), 'unlogged table')}, copied once at start, changes after "
            f"it are not carried: {_names(unlogged)}",
            "their rows as of `cutover start` reach the target, later writes to them do not "
            "(an unlogged table writes no WAL to replicate); if they matter, make them logged "
            "before prepare",
            tuple(statement("ALTER TABLE {} SET LOGGED;", (r.schema, r.name)) for r in unlogged),
        )
    yield from _large_objects(plan, conn, scope, target)
    yield from _materialized_views(conn, scope)
    yield from _foreign_tables(conn, scope)
    # The move's own DDL guard, once prepare made it, is no one else's DDL.
    ours = ddl_guard.triggers(plan.move)
    triggers = [(name, event) for name, event in catalog.event_triggers(conn) if name not in ours]
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


def _size(n: float) -> str:
    """`512 B`, `3.2 MB`, `1.5 GB` (powers of 1024, as PostgreSQL counts)."""
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def large_object_seconds(count: int, size: int) -> float:
    """How long the switch's copy of large objects takes, as measured between lab servers."""
    return count / LARGE_OBJECTS_PER_SECOND + size / LARGE_OBJECT_BYTES_PER_SECOND


def _large_objects(
    plan: Plan, conn: Connection, scope: str, target: Connection
) -> Iterator[Finding]:
    found = large_objects.summary(conn)
    if not found.count:
        return
    # Only a superuser may read pg_largeobject: others learn its size on disk, no more.
    size = found.bytes if found.bytes is not None else found.disk_bytes
    what = f"{_count(found.count, 'large object')} ({_size(size)})"
    if found.bytes is None:
        what = f"{_count(found.count, 'large object')} (about {_size(size)} on disk)"
    seconds = large_object_seconds(found.count, size)
    estimate = f"about {seconds:.1f} s"
    if plan.large_objects is LargeObjects.FAIL:
        yield Finding(
            "large_objects",
            scope,
            Status.FAIL,
            f"{what}: logical replication does not carry them",
            "set `large_objects: copy` in the plan: the switch then copies them while the "
            f"source is fenced ({estimate} more write pause); or store them as bytea",
        )
        return
    missing = large_objects.missing_roles(conn, target)
    if missing:
        yield Finding(
            "large_objects",
            scope,
            Status.FAIL,
            f"{what}: roles that own or are granted them do not exist on the target: "
            + ", ".join(missing),
            "the copy gives each object the same owner and privileges; create the roles on "
            "the target (pg_dumpall --roles-only on the source has their attributes)",
            tuple(statement("CREATE ROLE {};", r) for r in missing),
        )
        return
    detail = f"{what}: copied during the write pause (large_objects: copy), {estimate}"
    superusers = catalog.current_role(conn).superuser and catalog.current_role(target).superuser
    if superusers and seconds <= LARGE_OBJECT_PAUSE_SECONDS:
        yield Finding("large_objects", scope, Status.OK, detail)
        return
    hints = []
    if seconds > LARGE_OBJECT_PAUSE_SECONDS:
        hints.append(
            "the copy lengthens the write pause by that much; storing them as bytea lets "
            "replication carry them instead"
        )
    if not superusers:
        hints.append(
            "the copy reads every object on the source (SELECT on each, or "
            "lo_compat_privileges) and sets owners and grants on the target (a member of each "
            "owner role); without those rights, which superusers have, that step fails and "
            "the switch rolls back"
        )
    yield Finding("large_objects", scope, Status.WARN, detail, "; ".join(hints))


def _materialized_views(conn: Connection, scope: str) -> Iterator[Finding]:
    views = matviews.views(conn)
    if not views:
        return
    populated = [v for v in views if v.populated]
    empty = [v for v in views if not v.populated]
    parts = []
    if populated:
        parts.append(
            ", ".join(v.label for v in populated)
            + " refreshed on the target after the copy and after the switch"
        )
    if empty:
        parts.append(", ".join(v.label for v in empty) + " left unpopulated as on the source")
    detail = f"{_count(len(views), 'materialized view')}: " + "; ".join(parts)
    blocking = [v for v in populated if not v.unique_index]
    if not blocking:
        yield Finding("materialized_views", scope, Status.OK, detail)
        return
    yield Finding(
        "materialized_views",
        scope,
        Status.WARN,
        detail,
        "without a unique index the refresh after the switch cannot run CONCURRENTLY, so "
        "reads of " + ", ".join(v.label for v in blocking) + " wait for it; a unique index "
        "over plain columns avoids that",
    )


def _foreign_tables(conn: Connection, scope: str) -> Iterator[Finding]:
    foreign = catalog.foreign_tables(conn)
    if not foreign:
        return
    servers: dict[str, list[catalog.ForeignTable]] = defaultdict(list)
    for table in foreign:
        servers[table.server].append(table)
    through = "; ".join(
        f"server {quote(server)} ({tables[0].wrapper}, "
        f"{_count(tables[0].user_mappings, 'user mapping')}): "
        + ", ".join(t.display for t in tables)
        for server, tables in servers.items()
    )
    yield Finding(
        "foreign_tables",
        scope,
        Status.WARN,
        f"{_count(len(foreign), 'foreign table')}: definitions move, data stays remote: " + through,
        "the schema copy brings the foreign servers and their user mappings; on the target, "
        "check that it reaches each server (its host and port options, pg_hba.conf there) "
        "and that the user mappings hold credentials that work (pg_dump carries a mapping's "
        "password only when it may read it: see pg_user_mappings); the wrapper's extension "
        "must be on the target too",
    )


@dataclass(frozen=True)
class Extensions:
    """What the target server can install, and its version (which names the packages)."""

    available: frozenset[str]
    server_version: int


# The extensions of PostgreSQL's contrib: on Debian and Ubuntu they are part of the
# server package postgresql-<major> (postgresql-contrib pulls in the default one).
CONTRIB = frozenset(
    "adminpack amcheck autoinc bloom btree_gin btree_gist chkpass citext cube dblink "  # noqa: SIM905
    "dict_int dict_xsyn earthdistance file_fdw fuzzystrmatch hstore insert_username intagg "
    "intarray isn lo ltree moddatetime old_snapshot pageinspect pg_buffercache "
    "pg_freespacemap pg_logicalinspect pg_prewarm pg_stat_statements pg_surgery pg_trgm "
    "pg_visibility pg_walinspect pgcrypto pgrowlocks pgstattuple postgres_fdw refint seg "
    "sslinfo tablefunc tcn timetravel tsm_system_rows tsm_system_time unaccent uuid-ossp "
    "xml2".split()
)
# Procedural languages and their transforms: postgresql-<language>-<major>.
LANGUAGES = {
    "plperl": "plperl",
    "plperlu": "plperl",
    "bool_plperl": "plperl",
    "bool_plperlu": "plperl",
    "hstore_plperl": "plperl",
    "hstore_plperlu": "plperl",
    "jsonb_plperl": "plperl",
    "jsonb_plperlu": "plperl",
    "plpython3u": "plpython3",
    "hstore_plpython3u": "plpython3",
    "jsonb_plpython3u": "plpython3",
    "ltree_plpython3u": "plpython3",
    "pltcl": "pltcl",
    "pltclu": "pltcl",
}
# Extensions whose package is not named after them: postgresql-<major>-<this>.
PACKAGES = {
    "pglogical": "pglogical",
    "pglogical_origin": "pglogical",
    "postgis": "postgis-3",
    "postgis_raster": "postgis-3",
    "postgis_topology": "postgis-3",
    "postgis_sfcgal": "postgis-3",
    "postgis_tiger_geocoder": "postgis-3",
    "address_standardizer": "postgis-3",
    "address_standardizer_data_us": "postgis-3",
    "vector": "pgvector",
    "pg_cron": "cron",
    "pg_partman": "partman",
    "pg_repack": "repack",
    "pg_squeeze": "squeeze",
    "pg_similarity": "similarity",
    "pg_sphere": "pgsphere",
    "pg_rational": "rational",
    "pg_dirtyread": "dirtyread",
    "pgq": "pgq3",
    "pldbgapi": "pldebugger",
    "pointcloud_postgis": "pointcloud",
}
_NOT_IN_A_PACKAGE_NAME = re.compile(r"[^a-z0-9+.]+")


def debian_major(server_version: int) -> str:
    """The major version as Debian's package names spell it: `15`, or `9.6` before 10."""
    if server_version >= 100000:
        return str(server_version // 10000)
    return f"{server_version // 10000}.{server_version // 100 % 100}"


def package_for(extension: str, server_version: int) -> str | None:
    """The Debian/Ubuntu package that ships an extension for that server (None: no guess).

    Packages not in Debian itself come from PGDG's apt repository (apt.postgresql.org)
    under the same names; TimescaleDB from its own repository.
    """
    major = debian_major(server_version)
    if extension in CONTRIB:
        return f"postgresql-{major}"
    if extension in LANGUAGES:
        return f"postgresql-{LANGUAGES[extension]}-{major}"
    if extension == "timescaledb":
        return f"timescaledb-2-postgresql-{major}"
    # Debian names hold lowercase letters, digits, +, - and . only: pg_hint_plan is
    # postgresql-15-pg-hint-plan.
    name = PACKAGES.get(extension) or _NOT_IN_A_PACKAGE_NAME.sub("-", extension.lower()).strip("-")
    return f"postgresql-{major}-{name}" if name else None


def _extensions(conn: Connection, scope: str, target: Extensions) -> Iterator[Finding]:
    installed = catalog.installed_extensions(conn)
    yield from extension_findings(installed, target, scope)


def extension_findings(
    installed: dict[str, str], target: Extensions, scope: str
) -> Iterator[Finding]:
    """OK, or a FAIL naming the package that brings each extension the target lacks."""
    missing = sorted(set(installed) - target.available)
    if not missing:
        if installed:
            yield Finding(
                "extensions",
                scope,
                Status.OK,
                f"{_count(len(installed), 'extension')}, all available on the target",
            )
        return
    packages = {name: package_for(name, target.server_version) for name in missing}

    def note(name: str) -> str:
        package = packages[name]
        if package is None:
            return f"{name} (no package known: find the one with {name}.control)"
        if name in CONTRIB:
            return f"{name} (contrib: part of {package})"
        return f"{name} (package {package})"

    wanted = sorted({p for p in packages.values() if p})
    yield Finding(
        "extensions",
        scope,
        Status.FAIL,
        f"{_count(len(missing), 'extension')} not available on the target: "
        + ", ".join(note(name) for name in missing),
        "install the packages on the target server (Debian/Ubuntu; those Debian lacks are in "
        "PGDG's apt repository, apt.postgresql.org), then check again; on a managed service "
        "(Cloud SQL, RDS, Azure) enable the extension in its console or flags instead "
        "(cloudsql.enable_<name>, rds.allowed_extensions, azure.extensions): it must be one "
        "the service offers",
        (f"apt-get install {' '.join(wanted)}",) if wanted else (),
    )


def _orphans(conn: Connection, scope: str, relations: list[catalog.Relation]) -> Iterator[Finding]:
    keys = catalog.foreign_keys(conn)
    readable = {(r.schema, r.name) for r in relations if r.schema_usage and r.can_select}
    usable = {r.schema for r in relations if r.schema_usage}

    def ends(fk: catalog.ForeignKey) -> list[tuple[str, str]]:
        return [(fk.child_schema, fk.child_table), (fk.parent_schema, fk.parent_table)]

    # A count over a table we may not read would fail the whole check: say what to grant.
    blind = [fk for fk in keys if not all(t in readable for t in ends(fk))]
    if blind:
        role = catalog.current_role(conn).name
        unread = sorted({t for fk in blind for t in ends(fk) if t not in readable})
        schemas = sorted({schema for schema, _ in unread} - usable)
        yield Finding(
            "foreign_key_orphans",
            scope,
            Status.FAIL,
            f"{role} may not read {', '.join(quote(t) for t in unread)}: rows that point at "
            f"nothing cannot be looked for ({_count(len(blind), 'foreign key')})",
            "a foreign key whose rows point at nothing cannot be created on the target; "
            "run these as the owner or a superuser, then check again",
            (
                *(statement("GRANT USAGE ON SCHEMA {} TO {};", s, role) for s in schemas),
                f"GRANT SELECT ON TABLE {', '.join(quote(t) for t in unread)} TO {quote(role)};",
            ),
        )
    broken = [(fk, n) for fk in keys if fk not in blind and (n := catalog.count_orphans(conn, fk))]
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
    if not broken and not blind:
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


def _target_rows(source: Connection, target: Connection, db: str, scope: str) -> Iterator[Finding]:
    """Start refuses to copy into tables that hold rows: say so before anything runs."""
    moved = {
        (r.schema, r.name)
        for r in catalog.relations(source)
        if r.is_table and r.schema != barrier.SCHEMA  # cutover's own come and go with it
    }
    there = [r for r in catalog.relations(target) if (r.schema, r.name) in moved]
    if not there:
        return
    readable = [(r.schema, r.name) for r in there if r.schema_usage and r.can_select]
    unread = [(r.schema, r.name) for r in there if not (r.schema_usage and r.can_select)]
    holding = catalog.tables_with_rows(target, readable)
    if holding:
        yield Finding("target_rows", scope, Status.FAIL, copy.filled(db, holding), copy.FILLED_HINT)
    if unread:
        role = catalog.current_role(target).name
        yield Finding(
            "target_rows",
            scope,
            Status.WARN,
            f"{role} may not read {', '.join(quote(t) for t in unread)} on the target: "
            "whether they hold rows is unknown",
            "start refuses to copy into a table that holds rows; "
            "run this as the owner or a superuser, then check again",
            (f"GRANT SELECT ON TABLE {', '.join(quote(t) for t in unread)} TO {quote(role)};",),
        )
    if not holding and not unread:
        yield Finding(
            "target_rows",
            scope,
            Status.OK,
            f"{_count(len(there), 'table')} already on the target, all empty",
        )


def _nothing(plan: Plan, pool: Pool, source: Connection, target: Connection) -> Iterator[Finding]:
    yield from ()


# What an engine needs of the servers beyond what every engine needs: one entry per engine.
ENGINE_CHECKS: dict[Engine, Callable[[Plan, Pool, Connection, Connection], Iterator[Finding]]] = {
    Engine.PGLOGICAL: _pglogical,
}
