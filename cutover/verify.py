"""Source against target: exact row counts, or every row's content by chunked checksums.

Both servers are read at the same time, each in one snapshot shared by all
the jobs. While replication runs, the target's snapshot is taken only after it
has applied a barrier written after the source's, so it holds at least what
the source's snapshot holds. Rows the target applied past that point look
different: they are read again, by key, at a new consistent point, and a row
is reported only if it differs every time.

In checksum mode each table is cut into chunks of keys; a chunk's row count
and XOR of row hashes come from one scan per side (`pg.checksum`). Chunks that
differ are read row by row, down to the keys that are missing, extra or
changed on the target.
"""

import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from enum import StrEnum
from functools import partial
from typing import Any, TypeVar

from cutover.errors import CutoverError, UsageError
from cutover.pg import catalog, checksum
from cutover.pg.connect import Connection, DatabaseError, Pool, both, connect
from cutover.pg.ident import quote
from cutover.pg.replication import replicated_tables
from cutover.plan import Server
from cutover.types import TableName

T = TypeVar("T")
RECHECKS = 3  # rounds of reading differing rows again while replication runs
DRILL_BATCH = 20  # chunks read row by row in one statement (about 200,000 rows)


class Mode(StrEnum):
    """What is compared."""

    COUNT = "count"
    CHECKSUM = "checksum"


@dataclass(frozen=True)
class Difference:
    """One row that differs: missing on the target, extra on the target, or changed."""

    kind: str
    key: tuple[Any, ...]


@dataclass(frozen=True)
class TableResult:
    """One table's comparison."""

    database: str
    schema: str
    name: str
    source_rows: int | None = None
    target_rows: int | None = None
    chunks: int = 0
    chunks_differ: int = 0
    differences: int = 0  # rows that differ; in count mode 1 when the counts do
    keys: tuple[Difference, ...] = ()  # the first --max-keys of them
    show: str | None = None  # a statement that shows those rows on either side
    note: str | None = None
    error: str | None = None

    @property
    def table(self) -> str:
        """The table's name as SQL spells it."""
        return quote((self.schema, self.name))

    @property
    def equal(self) -> bool:
        """Nothing differs and nothing failed."""
        return self.differences == 0 and self.error is None


@dataclass
class Report:
    """A whole verification."""

    mode: Mode
    tables: list[TableResult] = field(default_factory=list)
    points: dict[str, str] = field(default_factory=dict)  # database -> how it was made consistent
    seconds: float = 0.0

    @property
    def differences(self) -> int:
        """Rows (or tables, by count) that differ, over every database."""
        return sum(t.differences for t in self.tables)

    @property
    def errors(self) -> int:
        """Tables that could not be compared."""
        return sum(1 for t in self.tables if t.error is not None)

    def mismatches(self) -> dict[str, int]:
        """Differences per database."""
        found = dict.fromkeys(self.points, 0)
        for t in self.tables:
            found[t.database] = found.get(t.database, 0) + t.differences
        return found


@dataclass(frozen=True)
class _Found:
    """A table compared in one snapshot, before differing rows are read again."""

    result: TableResult
    differences: list[Difference] = field(default_factory=list)
    shape: checksum.Shape | None = None


Settle = Callable[[], str]  # waits until the target holds what the source committed; says how


class _Connections:
    """One connection per side and per thread, opened on first use."""

    def __init__(self, source: Server, target: Server, db: str) -> None:
        self._servers = {"source": source, "target": target}
        self._db = db
        self._local = threading.local()
        self._all: list[Connection] = []
        self._lock = threading.Lock()

    def get(self, side: str) -> Connection:
        conns: dict[str, Connection] = self._local.__dict__.setdefault("conns", {})
        if side not in conns:
            conns[side] = connect(self._servers[side], self._db, label=side)
            with self._lock:
                self._all.append(conns[side])
        return conns[side]

    def close(self) -> None:
        for conn in self._all:
            conn.close()


def verify_database(
    source: Server,
    target: Server,
    db: str,
    *,
    mode: Mode,
    tables: Sequence[tuple[str, str]] | None,
    settle: Settle,
    jobs: int,
    max_keys: int,
    report: Report,
    on_table: Callable[[TableResult], None] = lambda _: None,
) -> None:
    """Compare every replicated table of one database (or the chosen ones) into `report`."""
    conns = _Connections(source, target, db)
    try:
        chosen = _tables(conns.get("source"), tables)
        with _consistent(conns, settle) as (point, snapshots):
            report.points[db] = point

            def one(table: TableName) -> _Found:
                found = _one_table(conns, snapshots, db, table, mode=mode)
                on_table(found.result)
                return found

            with ThreadPoolExecutor(max_workers=jobs) as pool:
                compared = list(pool.map(one, chosen))
        for first in compared:
            found = first
            if point != NOTHING_RUNS and found.result.differences and not found.shape:
                found = _recount(conns, settle, found)
            differences, note = found.differences, found.result.note
            if differences and found.shape and point != NOTHING_RUNS:
                differences, note = _recheck(conns, settle, found.shape, differences, note)
            listed = tuple(differences[:max_keys])
            show = None
            if listed and found.shape:
                show = checksum.show_rows(conns.get("source"), found.shape, [d.key for d in listed])
            report.tables.append(
                replace(
                    found.result,
                    differences=len(differences) if found.shape else found.result.differences,
                    keys=listed,
                    show=show,
                    note=note,
                )
            )
    finally:
        conns.close()


NOTHING_RUNS = "no replication runs: both sides read as they are"
RECHECK_LIMIT = 10_000  # more differing rows than this are not read again one by one


def _tables(source: Connection, chosen: Sequence[tuple[str, str]] | None) -> list[TableName]:
    every = [
        TableName(t.schema, t.name) for t in replicated_tables(source) if t.schema != "_cutover"
    ]
    if chosen is None:
        return every
    missing = [t for t in chosen if t not in every]
    if missing:
        raise UsageError(
            f"not a replicated table of the source: {', '.join(quote(t) for t in missing)}",
            hint="name tables as schema.table; `cutover status` lists the replicated ones",
        )
    return [TableName(*t) for t in chosen]


@contextmanager
def _consistent(conns: _Connections, settle: Settle) -> Iterator[tuple[str, tuple[str, str]]]:
    """The source's snapshot, then (once the target applied past it) the target's."""
    with checksum.snapshot(conns.get("source")) as source_snapshot:
        point = settle()
        with checksum.snapshot(conns.get("target")) as target_snapshot:
            yield point, (source_snapshot, target_snapshot)


def _one_table(
    conns: _Connections, snapshots: tuple[str, str], db: str, table: TableName, *, mode: Mode
) -> _Found:
    try:
        source, target = conns.get("source"), conns.get("target")
        with (
            checksum.snapshot(source, exported=snapshots[0]),
            checksum.snapshot(target, exported=snapshots[1]),
        ):
            if mode is Mode.COUNT:
                return _Found(count_tables(source, target, db, [table])[0])
            return _checksum_table(source, target, db, table)
    except (DatabaseError, CutoverError) as exc:
        reason = exc.message if isinstance(exc, CutoverError) else str(exc).strip()
        return _Found(TableResult(db, *table, error=reason.splitlines()[0]))


def count_tables(
    source: Connection, target: Connection, db: str, tables: Sequence[tuple[str, str]]
) -> list[TableResult]:
    """Exact row counts of every table, one statement per side, both sides at once."""
    source_counts, target_counts = both(
        lambda: catalog.exact_counts(source, tables),
        lambda: catalog.exact_counts(target, tables),
    )
    return [
        TableResult(
            db,
            *t,
            source_rows=source_counts.get(t),
            target_rows=target_counts.get(t),
            differences=int(source_counts.get(t) != target_counts.get(t)),
        )
        for t in map(TableName._make, tables)
    ]


class Pinned:
    """Both sides of one database as they stood at one moment, held until closed.

    The switch opens it before the pause (connecting costs more than a snapshot),
    pins it in the pause once the target has applied the barrier, and counts in it
    after the writers are back: the counts compare the moment of the barrier, while
    the target already takes new writes.
    """

    def __init__(self, pool: Pool, db: str) -> None:
        self.db = db
        self._sides = both(lambda: pool.open("source", db), lambda: pool.open("target", db))
        self.pinned = False

    def pin(self) -> None:
        """Take each side's snapshot now (the first statement of a repeatable read takes it)."""
        for conn in self._sides:
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute("SELECT 1")
        self.pinned = True

    def counts(self, tables: Sequence[tuple[str, str]]) -> list[TableResult]:
        """count_tables in the pinned snapshots."""
        return count_tables(*self._sides, self.db, tables)

    def close(self) -> None:
        """Let the snapshots go."""
        for conn in self._sides:
            conn.close()


def counts(pool: Pool, db: str, tables: Sequence[tuple[str, str]]) -> list[TableResult]:
    """count_tables of one database of the move, source against target."""
    return count_tables(pool.get("source", db), pool.get("target", db), db, tables)


def _checksum_table(source: Connection, target: Connection, db: str, table: TableName) -> _Found:
    shape, target_shape = (
        found.get(table)
        for found in both(
            lambda: checksum.shapes(source, [table]), lambda: checksum.shapes(target, [table])
        )
    )
    if shape is None or target_shape is None:
        side = "source" if shape is None else "target"
        return _Found(TableResult(db, *table, error=f"the table does not exist on the {side}"))
    missing = {c.name for c in shape.columns} - {c.name for c in target_shape.columns}
    if missing:
        return _Found(
            TableResult(db, *table, error=f"columns missing on the target: {sorted(missing)}")
        )
    if not shape.key:
        counted = count_tables(source, target, db, [table])[0]
        return _Found(replace(counted, note="by count: no primary key"))
    shape = checksum.hashed(source, shape)
    chunks = checksum.chunking(source, shape)
    source_chunks, target_chunks = both(
        lambda: checksum.summarise(source, shape, chunks),
        lambda: checksum.summarise(target, shape, chunks),
    )
    every = source_chunks.keys() | target_chunks.keys()
    differ = sorted(c for c in every if source_chunks.get(c) != target_chunks.get(c))
    differences: list[Difference] = []
    for start in range(0, len(differ), DRILL_BATCH):
        ids = differ[start : start + DRILL_BATCH]
        source_rows, target_rows = both(
            partial(checksum.rows, source, shape, chunks, ids),
            partial(checksum.rows, target, shape, chunks, ids),
        )
        differences += _compare(source_rows, target_rows)
    result = TableResult(
        db,
        *table,
        source_rows=sum(n for n, _ in source_chunks.values()),
        target_rows=sum(n for n, _ in target_chunks.values()),
        chunks=len(every),
        chunks_differ=len(differ),
    )
    return _Found(result, differences, shape)


Rows = dict[tuple[Any, ...], int]


def _compare(source: Rows, target: Rows) -> list[Difference]:
    found = [Difference("missing", k) for k in source.keys() - target.keys()]
    found += [Difference("extra", k) for k in target.keys() - source.keys()]
    found += [
        Difference("changed", k) for k in source.keys() & target.keys() if source[k] != target[k]
    ]
    return sorted(found, key=lambda d: (d.kind, repr(d.key)))


def _recount(conns: _Connections, settle: Settle, found: _Found) -> _Found:
    """A table whose counts differ while replication runs, compared again as checksum mode does.

    The target's snapshot is taken once it applied past the source's, so it may
    hold rows committed since. The table is counted again at a new consistent
    point; if the counts still differ, its rows are compared by key and those
    that differ are read again (`_recheck`): a row counts only if it differs
    every time. A table without a key can only be counted again.
    """
    first = found.result
    table = TableName(first.schema, first.name)
    source, target = conns.get("source"), conns.get("target")
    for _ in range(RECHECKS):
        with checksum.snapshot(source):
            settle()
            with checksum.snapshot(target):
                again = count_tables(source, target, first.database, [table])[0]
                if not again.differences:
                    note = "the counts differed while replication ran, and matched counted again"
                    return _Found(replace(again, note=first.note or note))
                keyed = _checksum_table(source, target, first.database, table)
        if keyed.shape is None:
            continue  # no key: count again
        differences, _ = _recheck(conns, settle, keyed.shape, keyed.differences, None)
        if differences:
            note = f"{len(differences)} rows differ by key, each time they were read"
        else:
            note = "the counts differed while replication ran; every row matched by key read again"
        return _Found(replace(first, differences=min(len(differences), 1), note=note))
    return found


def _recheck(
    conns: _Connections,
    settle: Settle,
    shape: checksum.Shape,
    differences: list[Difference],
    note: str | None,
) -> tuple[list[Difference], str | None]:
    """Read the differing rows again at new consistent points; keep those that differ each time."""
    if len(differences) > RECHECK_LIMIT:
        return differences, f"over {RECHECK_LIMIT:,} rows differ: not read again one by one"
    source, target = conns.get("source"), conns.get("target")
    still = differences
    for _ in range(RECHECKS):
        keys = [d.key for d in still]
        with checksum.snapshot(source):
            settle()
            with checksum.snapshot(target):
                source_rows, target_rows = both(
                    partial(checksum.rows_by_key, source, shape, keys),
                    partial(checksum.rows_by_key, target, shape, keys),
                )
        still = _compare(source_rows, target_rows)
        if not still:
            break
    settled = len(differences) - len(still)
    if settled:
        note = f"{settled} rows changed during the comparison and matched when read again"
    return still, note
