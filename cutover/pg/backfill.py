"""A primary key for a table that has none, added while its writers keep writing.

Logical replication carries UPDATE and DELETE only for tables with a key. For
a table without one, in this order, no writer waiting longer than
`lock_timeout` on any of it:

1. a nullable `bigint` column (metadata only), marked as the move's by its
   comment, an owned sequence, and its default for new rows;
2. existing rows numbered in batches of page ranges (`ctid`), each batch its
   own transaction sized to a target time, `WHERE col IS NULL` so a row is
   never numbered twice (a run killed halfway resumes by skipping numbered
   rows); a last sweep numbers rows that writers moved behind the batches;
3. `CHECK (col IS NOT NULL) NOT VALID`, `VALIDATE` (no write lock), then
   `SET NOT NULL`, which the valid check spares a scan;
4. `CREATE UNIQUE INDEX CONCURRENTLY` (an invalid one left by a failure is
   dropped and built again);
5. `ADD PRIMARY KEY USING INDEX`.

Every DDL statement runs with `lock_timeout` and is tried again on a lock
timeout. Names of the sequence, index and constraints derive from a hash of
the table, so they fit in 63 bytes whatever the table is called.
"""

import hashlib
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import psycopg
from psycopg import sql

from cutover.errors import PreconditionFailed, Retryable, StepFailed
from cutover.pg.connect import Connection
from cutover.pg.ident import quote

Table = tuple[str, str]  # (schema, name)

TARGET_BATCH_SECONDS = 0.25  # a writer meeting a batch's row locks waits at most about this
FIRST_BATCH_PAGES = 64
MAX_BATCH_PAGES = 65536
LOCK_ATTEMPTS = 30
MAX_PASSES = 5  # one pass, then sweeps for rows that writers moved behind the batches


def mark(move: str) -> str:
    """The comment on each column a move added: what cleanup looks for, exactly."""
    return f"added by cutover for move {move}; dropped by cutover cleanup"


@dataclass(frozen=True)
class Key:
    """The key cutover adds to one table, and the names of its parts."""

    table: Table
    column: str
    move: str

    @property
    def _tag(self) -> str:
        return hashlib.sha1(f"{self.table[0]}.{self.table[1]}".encode()).hexdigest()[:10]

    @property
    def sequence(self) -> Table:
        """The sequence that numbers the rows, in the table's schema."""
        return (self.table[0], f"cutover_seq_{self._tag}")

    @property
    def index(self) -> str:
        """The unique index, which becomes the primary key's."""
        return f"cutover_pk_{self._tag}"

    @property
    def check(self) -> str:
        """The NOT NULL check that spares SET NOT NULL its scan."""
        return f"cutover_nn_{self._tag}"

    @property
    def mark(self) -> str:
        """The column's comment: this column is the move's, cleanup may drop it."""
        return mark(self.move)

    @property
    def label(self) -> str:
        """The table and column, as SQL spells them."""
        return f"{quote(self.table)}.{quote(self.column)}"


@dataclass(frozen=True)
class State:
    """How far the key is, as the catalog shows it."""

    column: bool  # the column exists
    ours: bool  # ... and carries the move's mark
    default: bool  # new rows get a number
    not_null: bool
    index: str  # missing, invalid or valid
    primary_key: bool  # the table's primary key is on the column
    table_has_key: bool  # the table has a primary key (ours or not)


def state(conn: Connection, key: Key) -> State:
    """The key's state on the connected server."""
    row = conn.execute(
        sql.SQL(
            "SELECT a.attnum IS NOT NULL AS column, "
            "coalesce(pg_catalog.col_description(c.oid, a.attnum) = %s, false) AS ours, "
            "coalesce(a.atthasdef, false) AS default, coalesce(a.attnotnull, false) AS not_null, "
            "(SELECT CASE WHEN i.indisvalid THEN 'valid' ELSE 'invalid' END "
            " FROM pg_catalog.pg_class ic JOIN pg_catalog.pg_index i ON i.indexrelid = ic.oid "
            " WHERE ic.relname = %s AND ic.relnamespace = c.relnamespace) AS index, "
            "EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid "
            " AND i.indisprimary AND i.indkey::text = a.attnum::text) AS primary_key, "
            "EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid "
            " AND i.indisprimary) AS table_has_key "
            "FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "LEFT JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = %s "
            " AND NOT a.attisdropped "
            "WHERE n.nspname = %s AND c.relname = %s"
        ),
        (key.mark, key.index, key.column, *key.table),
    ).fetchone()
    if row is None:
        raise PreconditionFailed(
            f"table {quote(key.table)} does not exist",
            hint="check backfill.tables in the plan (schema.table, quoted as SQL quotes it)",
        )
    return State(
        column=bool(row["column"]),
        ours=bool(row["ours"]),
        default=bool(row["default"]),
        not_null=bool(row["not_null"]),
        index=row["index"] or "missing",
        primary_key=bool(row["primary_key"]),
        table_has_key=bool(row["table_has_key"]),
    )


@contextmanager
def _bounded(conn: Connection, lock_timeout: float) -> Iterator[None]:
    """One transaction in which no lock is waited for longer than `lock_timeout`."""
    with conn.transaction():
        conn.execute(
            sql.SQL("SET LOCAL lock_timeout = {}").format(
                sql.Literal(f"{int(lock_timeout * 1000)}ms")
            )
        )
        yield


def ddl(
    conn: Connection,
    statements: list[sql.Composed],
    *,
    lock_timeout: float,
    what: str,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Run statements in one transaction, waiting at most `lock_timeout` for each lock.

    A lock timeout rolls back and tries again after a short random pause, so a
    queue of writers behind cutover never builds up.
    """
    for attempt in range(1, LOCK_ATTEMPTS + 1):
        try:
            with _bounded(conn, lock_timeout):
                for statement in statements:
                    conn.execute(statement)
            return
        except psycopg.errors.LockNotAvailable:
            sleep(min(5.0, 0.1 * attempt) * (0.5 + random.random()))
    raise Retryable(
        f"{what}: the table stayed locked by other sessions through {LOCK_ATTEMPTS} "
        f"tries of {lock_timeout:g} s",
        hint="a long transaction holds the table; end it, or run again at a quieter moment",
        delay=5.0,
    )


def add_column(conn: Connection, key: Key, *, lock_timeout: float) -> None:
    """The nullable column with the move's mark, its owned sequence and its default."""
    table, column = sql.Identifier(*key.table), sql.Identifier(key.column)
    sequence = sql.Identifier(*key.sequence)
    ddl(
        conn,
        [
            sql.SQL("ALTER TABLE {} ADD COLUMN IF NOT EXISTS {} bigint").format(table, column),
            sql.SQL("COMMENT ON COLUMN {}.{} IS {}").format(table, column, sql.Literal(key.mark)),
            sql.SQL("CREATE SEQUENCE IF NOT EXISTS {} AS bigint OWNED BY {}.{}").format(
                sequence, table, column
            ),
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET DEFAULT pg_catalog.nextval({})").format(
                table, column, sql.Literal(quote(key.sequence))
            ),
        ],
        lock_timeout=lock_timeout,
        what=f"adding {key.label}",
    )


@dataclass
class FillProgress:
    """Where the numbering stands."""

    rows: int = 0  # rows numbered by this run
    rows_total: int = 0  # the table's rows when it started (the planner's estimate)
    pages_done: int = 0
    pages_total: int = 0
    batches: int = 0
    seconds: float = 0.0


def fill(
    conn: Connection,
    key: Key,
    *,
    lock_timeout: float,
    on_progress: Callable[[FillProgress], None] = lambda _: None,
    throttle: Callable[[], float] = lambda: 0.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> FillProgress:
    """Number every row that has no number yet, batch by batch; returns what it did.

    `throttle` returns seconds to pause before the next batch (replication
    lag or lock waits on the table growing); batches aim at
    TARGET_BATCH_SECONDS whatever the rows' width.
    """
    table, column = sql.Identifier(*key.table), sql.Identifier(key.column)
    pages, rows = _extent(conn, key.table)
    progress = FillProgress(pages_total=pages, rows_total=rows)
    started = clock()
    update = sql.SQL(
        "UPDATE {t} SET {c} = pg_catalog.nextval({s}) WHERE ctid >= {lo}::pg_catalog.tid "
        "AND ctid < {hi}::pg_catalog.tid AND {c} IS NULL"
    )
    step = FIRST_BATCH_PAGES
    passes = 1
    while True:
        if progress.pages_done >= progress.pages_total:
            # Writers may have moved unnumbered rows behind the batches, or the table grew.
            if not _has_nulls(conn, key):
                break
            passes += 1
            if passes > MAX_PASSES:
                raise StepFailed(
                    f"{key.label} still has rows without a number after {MAX_PASSES} passes",
                    hint="something writes NULL into the column explicitly; stop it and run "
                    "again: numbered rows are kept",
                )
            progress.pages_total, _ = _extent(conn, key.table)
            progress.pages_done = 0
        first, end = progress.pages_done, progress.pages_done + step
        statement = update.format(
            t=table,
            c=column,
            s=sql.Literal(quote(key.sequence)),
            lo=sql.Literal(f"({first},0)"),
            hi=sql.Literal(f"({end},0)"),
        )
        batch_started = clock()
        numbered = _batch(conn, statement, lock_timeout=lock_timeout)
        elapsed = clock() - batch_started
        if numbered is None:  # a writer held a row: smaller batches, after a pause
            step = max(1, step // 4)
            sleep(0.1)
            continue
        progress.rows += numbered
        progress.pages_done = end
        progress.batches += 1
        progress.seconds = clock() - started
        on_progress(progress)
        scale = TARGET_BATCH_SECONDS / max(elapsed, 1e-3)
        step = int(min(MAX_BATCH_PAGES, max(1, step * min(4.0, max(0.25, scale)))))
        pause = throttle()
        if pause > 0:
            sleep(pause)
    progress.seconds = clock() - started
    return progress


def _batch(conn: Connection, statement: sql.Composed, *, lock_timeout: float) -> int | None:
    """One batch in its own transaction; None when a lock was not granted in time."""
    try:
        with _bounded(conn, lock_timeout):
            return conn.execute(statement).rowcount
    except psycopg.errors.LockNotAvailable:
        return None


def _extent(conn: Connection, table: Table) -> tuple[int, int]:
    """The table's pages now, and its rows as the planner estimates them."""
    row = conn.execute(
        sql.SQL(
            "SELECT pg_catalog.pg_relation_size(oid) / "
            "pg_catalog.current_setting('block_size')::bigint AS pages, "
            "greatest(reltuples, 0)::bigint AS rows FROM pg_catalog.pg_class "
            "WHERE oid = {}::pg_catalog.regclass"
        ).format(sql.Literal(quote(table)))
    ).fetchone()
    return (int(row["pages"]), int(row["rows"])) if row else (0, 0)


def _has_nulls(conn: Connection, key: Key) -> bool:
    query = sql.SQL("SELECT EXISTS (SELECT 1 FROM {} WHERE {} IS NULL) AS any").format(
        sql.Identifier(*key.table), sql.Identifier(key.column)
    )
    row = conn.execute(query).fetchone()
    return bool(row and row["any"])


def set_not_null(conn: Connection, key: Key, *, lock_timeout: float) -> None:
    """NOT VALID check, VALIDATE (writers go on), SET NOT NULL without a scan, check dropped."""
    table, column = sql.Identifier(*key.table), sql.Identifier(key.column)
    check = sql.Identifier(key.check)
    exists = conn.execute(
        sql.SQL(
            "SELECT convalidated FROM pg_catalog.pg_constraint WHERE conname = %s "
            "AND conrelid = {}::pg_catalog.regclass"
        ).format(sql.Literal(quote(key.table))),
        (key.check,),
    ).fetchone()
    if exists is None:
        ddl(
            conn,
            [
                sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} CHECK ({} IS NOT NULL) NOT VALID").format(
                    table, check, column
                )
            ],
            lock_timeout=lock_timeout,
            what=f"the NOT NULL check of {key.label}",
        )
    if exists is None or not exists["convalidated"]:
        # SHARE UPDATE EXCLUSIVE: reads and writes go on while it scans.
        ddl(
            conn,
            [sql.SQL("ALTER TABLE {} VALIDATE CONSTRAINT {}").format(table, check)],
            lock_timeout=lock_timeout,
            what=f"validating the NOT NULL check of {key.label}",
        )
    ddl(
        conn,
        [
            sql.SQL("ALTER TABLE {} ALTER COLUMN {} SET NOT NULL").format(table, column),
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(table, check),
        ],
        lock_timeout=lock_timeout,
        what=f"SET NOT NULL on {key.label}",
    )


def build_index(conn: Connection, key: Key, *, index_state: str) -> None:
    """CREATE UNIQUE INDEX CONCURRENTLY; an invalid one from a failed build is replaced."""
    index = sql.Identifier(key.table[0], key.index)
    if index_state == "invalid":
        conn.execute(sql.SQL("DROP INDEX CONCURRENTLY IF EXISTS {}").format(index))
    # It waits for older transactions instead of blocking writers: no lock_timeout here.
    conn.execute(sql.SQL("SET lock_timeout = 0"))
    try:
        conn.execute(
            sql.SQL("CREATE UNIQUE INDEX CONCURRENTLY {} ON {} ({})").format(
                sql.Identifier(key.index),
                sql.Identifier(*key.table),
                sql.Identifier(key.column),
            )
        )
    finally:
        conn.execute(sql.SQL("RESET lock_timeout"))


def add_primary_key(conn: Connection, key: Key, *, lock_timeout: float) -> None:
    """The unique index becomes the table's primary key (a catalog change, no scan)."""
    ddl(
        conn,
        [
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} PRIMARY KEY USING INDEX {}").format(
                sql.Identifier(*key.table), sql.Identifier(key.index), sql.Identifier(key.index)
            )
        ],
        lock_timeout=lock_timeout,
        what=f"the primary key on {key.label}",
    )


def drop(conn: Connection, key: Key, *, lock_timeout: float) -> bool:
    """Drop the key and the column (its sequence goes with it), only if the column is ours."""
    current = state(conn, key)
    if not (current.column and current.ours):
        return False
    table = sql.Identifier(*key.table)
    statements: list[sql.Composed] = []
    if current.primary_key:
        statements.append(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT IF EXISTS {}").format(
                table, sql.Identifier(key.index)
            )
        )
    statements.append(
        sql.SQL("ALTER TABLE {} DROP COLUMN {}").format(table, sql.Identifier(key.column))
    )
    ddl(conn, statements, lock_timeout=lock_timeout, what=f"dropping {key.label}")
    return True


def marked_keys(conn: Connection, move: str) -> list[Key]:
    """The keys this move added in the connected database, found by their columns' mark."""
    rows = conn.execute(
        sql.SQL(
            "SELECT n.nspname AS schema, c.relname AS name, a.attname AS column "
            "FROM pg_catalog.pg_attribute a "
            "JOIN pg_catalog.pg_class c ON c.oid = a.attrelid "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind IN ('r', 'p') AND a.attnum > 0 AND NOT a.attisdropped "
            "AND pg_catalog.col_description(c.oid, a.attnum) = %s "
            "ORDER BY 1, 2"
        ),
        (mark(move),),
    ).fetchall()
    return [Key((r["schema"], r["name"]), r["column"], move) for r in rows]


@dataclass(frozen=True)
class Pressure:
    """What the batches cost the server right now."""

    waiting: int  # sessions waiting for a lock on the table
    replica_lag: int  # bytes the furthest replica of the server is behind


def pressure(conn: Connection, table: Table) -> Pressure:
    """Lock waits on the table and the replicas' lag, to slow the batches down."""
    row = conn.execute(
        sql.SQL(
            "SELECT (SELECT count(*) FROM pg_catalog.pg_locks WHERE NOT granted "
            "AND relation = {t}::pg_catalog.regclass) AS waiting, "
            "(SELECT coalesce(max(pg_catalog.pg_wal_lsn_diff(pg_catalog.pg_current_wal_lsn(), "
            "replay_lsn)), 0) FROM pg_catalog.pg_stat_replication) AS lag"
        ).format(t=sql.Literal(quote(table)))
    ).fetchone()
    assert row is not None
    return Pressure(int(row["waiting"]), int(row["lag"]))
