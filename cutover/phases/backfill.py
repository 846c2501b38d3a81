"""backfill: a primary key for each source table that has none, writers never blocked.

One phase per table (`backfill <table>`), each step read from the catalog, so
a killed run resumes where it stopped and never numbers a row twice:

1. add_column: `<column> bigint`, marked as the move's, its sequence (the table
   owner's, usable by every role that may insert) and default.
2. number_rows: existing rows numbered in batches of pages (see pg/backfill.py).
3. set_not_null: NOT VALID check, VALIDATE, SET NOT NULL without a scan; the
   column becomes an identity and the temporary sequence goes.
4. build_unique_index: CREATE UNIQUE INDEX CONCURRENTLY (an invalid one is rebuilt).
5. add_primary_key: ADD PRIMARY KEY USING INDEX.
"""

from collections.abc import Callable, Sequence

from cutover import database
from cutover.database import FillProgress, Key, Pool
from cutover.errors import PreconditionFailed
from cutover.plan import Plan
from cutover.steps import Change, Phase, Step
from cutover.types import TableName

THROTTLE_SECONDS = 0.5


def phase(
    plan: Plan,
    servers: Pool,
    db: str,
    table: TableName,
    *,
    on_progress: Callable[[FillProgress], None] = lambda _: None,
) -> Phase:
    """The backfill steps of one table of database `db`, on the source."""
    key = Key(table, plan.backfill.column, plan.move)
    fill = database.KeyBackfill(servers, db, key, lock_timeout=plan.thresholds.lock_timeout)
    state = fill.state

    def add_column(*, dry_run: bool) -> Sequence[Change]:
        current = state()
        if current.column and not current.ours:
            raise PreconditionFailed(
                f"{key.label} exists and is not cutover's: it is left alone",
                hint="name cutover's column otherwise with backfill.column in the plan",
            )
        if current.table_has_key and not current.primary_key:
            raise PreconditionFailed(
                f"{table} has a primary key already",
                hint="leave it out of backfill.tables",
            )
        return fill.add_column(dry_run=dry_run)

    def throttle() -> float:
        """Seconds to pause: writers queue behind a batch, or a replica falls behind."""
        now = fill.pressure()
        if now.waiting or now.replica_lag > plan.backfill.max_replica_lag:
            return THROTTLE_SECONDS
        return 0.0

    def number_rows(*, dry_run: bool) -> Sequence[Change]:
        return fill.number_rows(on_progress=on_progress, throttle=throttle, dry_run=dry_run)

    def index_ready() -> bool:
        current = state()
        return current.index == "valid" or current.primary_key

    def column_ready() -> bool:
        current = state()
        return current.column and current.ours and current.default

    return Phase(
        f"backfill {table}",
        (
            Step("add_column", add_column, column_ready),
            Step("number_rows", number_rows, lambda: state().not_null, attempts=1),
            Step("set_not_null", fill.set_not_null, lambda: state().not_null),
            Step("build_unique_index", fill.build_index, index_ready),
            Step("add_primary_key", fill.add_primary_key, lambda: state().primary_key),
        ),
    )
