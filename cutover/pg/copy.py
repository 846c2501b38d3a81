"""The initial copy: every table read in one snapshot of the source, several at a time.

The move's slot is created on a replication connection, which exports the
snapshot the slot starts from. Each copy job imports that snapshot, so the rows
copied and the changes the slot streams afterwards meet exactly: nothing is
missed and nothing arrives twice. The target has no index yet while it is
filled (they are built once, afterwards, which is faster than maintaining
them row by row), and nothing is applied to it until they exist.

A job pipes `psql -c "COPY ... TO STDOUT"` on the source into `COPY ... FROM
STDIN` on the target. A table whose columns are all of built-in types travels
in binary format when both servers run the same major version: the target
parses no text (a fifth less time for pgbench's accounts). Any other table
travels as text like pg_dump: binary format carries the OIDs of user types in
arrays and composites, and those differ between servers. The target side
commits only when the source side ended well. A table whose main
fork is over `SPLIT_BYTES` is split by page ranges over the jobs; a whole table
is truncated and filled in one transaction with FREEZE, so reading it later
writes no hint bits.
"""

import logging
import math
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from collections.abc import Set as AbstractSet
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field

import psycopg
from psycopg import sql

from cutover.errors import CutoverError, PreconditionFailed, StepFailed
from cutover.log import redact
from cutover.pg import catalog, tools
from cutover.pg.connect import Connection, connect
from cutover.pg.execute import change
from cutover.pg.ident import quote
from cutover.pg.queries import load
from cutover.plan import Server
from cutover.steps import Change
from cutover.types import SyncProgress, TableName, TableState

SPLIT_BYTES = 1 << 30  # a table larger than this is copied by several jobs at once
CHUNK = 1 << 20  # bytes read from the source's pipe at a time
POLL_SECONDS = 0.5
SLOT_WAIT_FIRST_SECONDS = 5.0  # creating the slot this long: say what it waits for
SLOT_WAIT_AGAIN_SECONDS = 30.0
STOPPED = "another part of the copy failed, or it was interrupted; that reason comes first"


@dataclass(frozen=True)
class Part:
    """One job's share: a whole table, or its pages `[first, end)` (end None: to the last)."""

    table: TableName
    columns: tuple[str, ...]
    bytes: int
    pages: tuple[int, int | None] | None = None
    binary: bool = False  # COPY in binary format: built-in types only, same major version

    @property
    def label(self) -> str:
        """The table, and the pages when it is a part."""
        if self.pages is None:
            return quote(self.table)
        first, end = self.pages
        return f"{quote(self.table)} pages {first}..{'' if end is None else end - 1}"


def page_ranges(pages: int, count: int) -> list[tuple[int, int | None]]:
    """`count` ranges `[first, end)` over a table's pages; the last is open to catch growth."""
    count = max(1, min(count, pages))
    step = math.ceil(pages / count) if pages else 1
    return [(i * step, None if i == count - 1 else (i + 1) * step) for i in range(count)]


def plan_parts(
    source: Connection,
    tables: Sequence[tuple[str, str]],
    *,
    jobs: int,
    binary: bool,
    split_bytes: int = SPLIT_BYTES,
) -> list[Part]:
    """The copy's parts, the largest first so the long ones start early.

    A table over `split_bytes` is cut into page ranges, as many as it has
    `split_bytes` in it, at most `jobs`. With `binary` (both servers of one major
    version), a table of built-in types only is copied in binary format.
    """
    rows = source.execute(
        load("copy_tables"), ([s for s, _ in tables], [n for _, n in tables])
    ).fetchall()
    parts: list[Part] = []
    for row in rows:
        table = TableName(row["schema"], row["name"])
        columns, size = tuple(row["columns"]), row["bytes"]
        fmt = binary and bool(row["built_in_types"])
        count = min(jobs, math.ceil(size / split_bytes), row["pages"])
        if count <= 1:
            parts.append(Part(table, columns, size, binary=fmt))
            continue
        parts += [
            Part(table, columns, size // count, r, binary=fmt)
            for r in page_ranges(row["pages"], count)
        ]
    return sorted(parts, key=lambda p: -p.bytes)


log = logging.getLogger(__name__)


def slot_command(slot: str) -> sql.Composed:
    """The replication command that creates the move's slot and exports its snapshot."""
    return sql.SQL("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT").format(
        sql.Identifier(slot)
    )


@contextmanager
def exported_snapshot(server: Server, db: str, slot: str) -> Iterator[str]:
    """Create the logical slot `slot` on the source; yields the snapshot it starts from."""
    conn = connect(server, db, label="source", replication=True)
    try:
        with _telling_what_it_waits_for(server, db, slot, conn.info.backend_pid):
            row = conn.execute(slot_command(slot)).fetchone()
        assert row is not None
        yield str(row["snapshot_name"])
    finally:
        conn.close()  # the snapshot ends with the connection; the slot stays


@contextmanager
def _telling_what_it_waits_for(
    server: Server, db: str, slot: str, walsender: int
) -> Iterator[None]:
    """While the slot is being created, warn now and then of the transactions it waits for.

    A logical slot starts from a consistent point: every transaction that held a
    transaction id when its creation began must end first, in any database of
    the server. An idle transaction left open keeps `start` waiting, silently
    without this.
    """
    created = threading.Event()

    def tell() -> None:
        if created.wait(SLOT_WAIT_FIRST_SECONDS):
            return
        began = time.monotonic() - SLOT_WAIT_FIRST_SECONDS
        with suppress(CutoverError, psycopg.Error), connect(server, db, label="source") as conn:
            while not created.is_set():
                waited = time.monotonic() - began
                older = catalog.transactions_older_than(conn, walsender)
                if older:
                    shown = "; ".join(t.describe() for t in older[:5])
                    more = f" and {len(older) - 5} more" if len(older) > 5 else ""
                    log.warning(
                        "creating the replication slot %s has waited %.0f s for %d transaction(s) "
                        "open on the source since before it: %s%s. It goes on once they end "
                        "(end one with SELECT pg_terminate_backend(pid)).",
                        slot,
                        waited,
                        len(older),
                        shown,
                        more,
                    )
                else:
                    log.warning(
                        "creating the replication slot %s has waited %.0f s: it waits for every "
                        "transaction open on the source when it began (pg_stat_activity shows "
                        "them to a role with pg_read_all_stats).",
                        slot,
                        waited,
                    )
                created.wait(SLOT_WAIT_AGAIN_SECONDS)

    teller = threading.Thread(target=tell, name="slot-wait", daemon=True)
    teller.start()
    try:
        yield
    finally:
        created.set()
        teller.join(timeout=5)


def _read_command(part: Part, conn: Connection) -> str:
    columns = sql.SQL(", ").join(sql.Identifier(c) for c in part.columns)
    table = sql.Identifier(*part.table)
    binary = sql.SQL(" (FORMAT binary)" if part.binary else "")
    if part.pages is None:
        query: sql.Composable = sql.SQL("COPY {} ({}) TO STDOUT{}").format(table, columns, binary)
    else:
        first, end = part.pages
        where = sql.SQL("ctid >= {}::pg_catalog.tid").format(sql.Literal(f"({first},0)"))
        if end is not None:
            where = sql.SQL("{} AND ctid < {}::pg_catalog.tid").format(
                where, sql.Literal(f"({end},0)")
            )
        query = sql.SQL("COPY (SELECT {} FROM ONLY {} WHERE {}) TO STDOUT{}").format(
            columns, table, where, binary
        )
    return query.as_string(conn)


@dataclass
class _Tracker:
    """What the jobs report, read by the thread that shows progress."""

    parts: list[Part]
    copied: dict[int, int] = field(default_factory=dict)  # part index -> bytes relayed
    finished: set[int] = field(default_factory=set)
    started: set[int] = field(default_factory=set)
    after: dict[int, set[int]] = field(default_factory=dict)  # part -> the parts it waits for
    processes: set["subprocess.Popen[bytes]"] = field(default_factory=set)
    stop: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def progress(self) -> SyncProgress:
        with self.lock:
            states: dict[str, set[TableState]] = {}
            done = 0
            for i, part in enumerate(self.parts):
                state = (
                    TableState.COPIED
                    if i in self.finished
                    else TableState.COPYING
                    if i in self.started
                    else TableState.QUEUED
                )
                states.setdefault(quote(part.table), set()).add(state)
                done += part.bytes if i in self.finished else min(part.bytes, self.copied.get(i, 0))
        tables = {t: s.pop() if len(s) == 1 else TableState.COPYING for t, s in states.items()}
        return SyncProgress(tables, sum(p.bytes for p in self.parts), done)

    def kill_all(self) -> None:
        self.stop.set()
        with self.lock:
            for process in self.processes:
                if process.poll() is None:
                    process.kill()


def referenced_first(
    parts: list[Part], references: AbstractSet[tuple[TableName, TableName]]
) -> tuple[list[Part], dict[int, set[int]]]:
    """The parts reordered so that a table comes after the tables it references (largest
    first among those free to go), and for each part the parts it must wait for.

    `references` holds (table, referenced table) pairs; a table's reference to itself
    and references that close a cycle are left out (order cannot help those).
    """
    tables = {p.table for p in parts}
    needs: dict[TableName, set[TableName]] = {t: set() for t in tables}
    for table, referenced in references:
        if table in tables and referenced in tables and table != referenced:
            needs[table].add(referenced)
    ordered: list[Part] = []
    placed: set[TableName] = set()
    waiting = sorted(parts, key=lambda p: -p.bytes)
    while waiting:
        free = [p for p in waiting if needs[p.table] <= placed | {p.table}]
        chosen = free[0] if free else waiting[0]  # a cycle: take the largest anyway
        if not free:
            needs[chosen.table] &= placed
        same = [p for p in waiting if p.table == chosen.table]
        ordered += same
        placed.add(chosen.table)
        waiting = [p for p in waiting if p.table != chosen.table]
    index: dict[TableName, list[int]] = {}
    for i, part in enumerate(ordered):
        index.setdefault(part.table, []).append(i)
    after = {
        i: {j for ref in needs[part.table] for j in index[ref]} for i, part in enumerate(ordered)
    }
    return ordered, {i: deps for i, deps in after.items() if deps}


class Copier:
    """Copy the parts of one database from source to target in `jobs` jobs."""

    def __init__(
        self,
        source: Server,
        target: Server,
        db: str,
        *,
        snapshot: str | None,
        freeze: AbstractSet[tuple[str, str]],
    ) -> None:
        self.source_env = tools.client_env(source, db, label="source")
        self.target = target
        self.db = db
        self.snapshot = snapshot  # None: each part reads what is committed when it starts
        self.freeze = freeze  # whole tables truncated and filled in one transaction

    def run(
        self,
        parts: list[Part],
        *,
        jobs: int,
        deadline: float,
        on_progress: Callable[[SyncProgress], None],
    ) -> None:
        """Every part copied; the first failure, the deadline or Ctrl-C stops every job.

        A table the target already holds foreign keys on (a schema made there by
        hand) is copied only once the tables it references are: the key is checked
        as each part commits.
        """
        with connect(self.target, self.db, label="target") as conn:
            references = catalog.foreign_key_references(conn)
        parts, after = referenced_first(parts, references)
        tracker = _Tracker(parts, after=after)
        with ThreadPoolExecutor(max_workers=jobs, thread_name_prefix="copy") as pool:
            futures: list[Future[None]] = [
                pool.submit(self._copy, i, part, tracker) for i, part in enumerate(parts)
            ]
            try:
                while True:
                    finished, pending = wait(futures, POLL_SECONDS, FIRST_EXCEPTION)
                    on_progress(tracker.progress())
                    for future in finished:
                        future.result()  # the first failure ends the copy
                    if not pending:
                        return
                    if time.monotonic() > deadline:
                        raise StepFailed(
                            f"the initial copy of {self.db} did not finish in time "
                            f"({len(tracker.finished)} of {len(parts)} parts copied)",
                            hint="raise thresholds.copy_timeout, or copy with more jobs "
                            "(start --parallel N), then run start again",
                        )
            except BaseException:
                tracker.kill_all()
                for future in futures:
                    future.cancel()
                raise

    def _copy(self, index: int, part: Part, tracker: _Tracker) -> None:
        while not tracker.stop.is_set() and not tracker.after.get(index, set()) <= tracker.finished:
            time.sleep(0.01)  # what it references is being copied (started before it)
        if tracker.stop.is_set():
            return
        with tracker.lock:
            tracker.started.add(index)
        conn = connect(self.target, self.db, label="target", autocommit=True)
        try:
            self._copy_part(index, part, conn, tracker)
        finally:
            conn.close()
        with tracker.lock:
            tracker.finished.add(index)

    def _copy_part(self, index: int, part: Part, conn: Connection, tracker: _Tracker) -> None:
        argv = [
            str(tools.bindir() / "psql"),
            "-X",
            "-q",
            "-v",
            "ON_ERROR_STOP=1",
            "-c",
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY",
        ]
        if self.snapshot is not None:
            snapshot = sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(self.snapshot))
            argv += ["-c", snapshot.as_string(conn)]
        argv += ["-c", _read_command(part, conn)]
        freeze = part.pages is None and part.table in self.freeze
        table = sql.Identifier(*part.table)
        columns = sql.SQL(", ").join(sql.Identifier(c) for c in part.columns)
        options = [sql.SQL("FORMAT binary")] if part.binary else []
        options += [sql.SQL("FREEZE")] if freeze else []
        write = sql.SQL("COPY {} ({}) FROM STDIN{}").format(
            table,
            columns,
            sql.SQL(" ({})").format(sql.SQL(", ").join(options)) if options else sql.SQL(""),
        )
        process = subprocess.Popen(
            argv, env=self.source_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0
        )
        with tracker.lock:
            tracker.processes.add(process)
        try:
            assert process.stdout is not None and process.stderr is not None
            with conn.transaction():
                if freeze:
                    conn.execute(sql.SQL("TRUNCATE ONLY {}").format(table))
                with conn.cursor().copy(write) as copy:
                    while chunk := process.stdout.read(CHUNK):
                        if tracker.stop.is_set():
                            raise StepFailed(f"the copy of {part.label} was stopped", hint=STOPPED)
                        copy.write(chunk)
                        with tracker.lock:
                            tracker.copied[index] = tracker.copied.get(index, 0) + len(chunk)
                    # Commit only what the source sent in full.
                    if process.wait() != 0:
                        if tracker.stop.is_set():
                            raise StepFailed(f"the copy of {part.label} was stopped", hint=STOPPED)
                        error = redact(process.stderr.read().decode(errors="replace").strip())
                        raise StepFailed(
                            f"reading {part.label} from the source failed: "
                            f"{error[-300:] or process.returncode}",
                            hint="the source's log says more; run start again: the copy "
                            "starts over from a new snapshot",
                        )
        finally:
            if process.poll() is None:
                process.kill()
            process.wait()
            with tracker.lock:
                tracker.processes.discard(process)


FILLED_HINT = (
    "the initial copy fills empty tables and never deletes what it did not write; "
    "empty them on the target (TRUNCATE) if they are leftovers"
)


def filled(db: str, holding: Sequence[tuple[str, str]]) -> str:
    """What start and check say of target tables that hold rows before the copy."""
    return (
        f"tables of {db} on the target already hold rows: "
        + ", ".join(quote(t) for t in holding[:5])
        + (f" and {len(holding) - 5} more" if len(holding) > 5 else "")
    )


def refuse_rows(conn: Connection, tables: Sequence[tuple[str, str]], db: str) -> None:
    """Raise unless every target table is empty: a copy never deletes what it did not write."""
    holding = catalog.tables_with_rows(conn, tables)
    if holding:
        raise PreconditionFailed(filled(db, holding), hint=FILLED_HINT)


def truncate(conn: Connection, tables: Sequence[tuple[str, str]]) -> None:
    """Empty the target tables in one statement (keys between them allow nothing else)."""
    truncate_change(conn, tables, where="target", dry_run=False)


def truncate_change(
    conn: Connection, tables: Sequence[tuple[str, str]], *, where: str, dry_run: bool
) -> list[Change]:
    """`truncate`, as the change it makes (none without tables)."""
    if not tables:
        return []
    names = sql.SQL(", ").join(sql.Identifier(*t) for t in tables)
    return [change(conn, sql.SQL("TRUNCATE ONLY {}").format(names), where=where, dry_run=dry_run)]


def same_major_version(source: Connection, target: Connection) -> bool:
    """Both servers of one major version: binary COPY of built-in types is safe between them."""
    return catalog.server_version(source) // 10000 == catalog.server_version(target) // 10000
