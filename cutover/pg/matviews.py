"""Materialized views: logical replication carries none of their rows.

The schema copy creates them empty on the target. A view populated on the
source is refreshed on the target after the initial copy (the target serves
nobody yet, so a plain refresh is fine), and once more after the promotion,
when the writers are back: CONCURRENTLY where a unique index allows it, so
the application's reads of the view are never blocked; a plain refresh
otherwise. A view left unpopulated on the source stays so on the target.
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from psycopg import sql

from cutover.pg.connect import Connection
from cutover.pg.execute import change, run
from cutover.pg.ident import quote
from cutover.steps import Change
from cutover.types import TableName

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViewState:
    """One materialized view as a server shows it."""

    view: TableName
    populated: bool
    unique_index: bool  # a unique index over plain columns: REFRESH ... CONCURRENTLY works

    @property
    def label(self) -> str:
        """The view's name as SQL spells it."""
        return quote(self.view)


@dataclass(frozen=True)
class Refreshed:
    """One refresh done."""

    view: TableName
    concurrently: bool
    seconds: float

    def describe(self) -> str:
        """`REFRESH MATERIALIZED VIEW CONCURRENTLY "s"."v" (12 ms)`."""
        how = " CONCURRENTLY" if self.concurrently else ""
        return f"REFRESH MATERIALIZED VIEW{how} {quote(self.view)} ({self.seconds * 1000:.0f} ms)"


def views(conn: Connection) -> list[ViewState]:
    """Every materialized view of the connected database that no extension owns."""
    rows = conn.execute(
        sql.SQL(
            "SELECT n.nspname AS schema, c.relname AS name, c.relispopulated AS populated, "
            "EXISTS (SELECT 1 FROM pg_catalog.pg_index i WHERE i.indrelid = c.oid "
            " AND i.indisunique AND i.indisvalid AND i.indpred IS NULL "
            " AND i.indexprs IS NULL) AS unique_index "
            "FROM pg_catalog.pg_class c "
            "JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace "
            "WHERE c.relkind = 'm' AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d "
            " WHERE d.classid = 'pg_catalog.pg_class'::pg_catalog.regclass "
            " AND d.objid = c.oid AND d.deptype = 'e') "
            "ORDER BY 1, 2"
        )
    ).fetchall()
    return [
        ViewState(TableName(r["schema"], r["name"]), bool(r["populated"]), bool(r["unique_index"]))
        for r in rows
    ]


def to_refresh(source: Connection, target: Connection) -> list[ViewState]:
    """The target's views that are populated on the source, as the target shows them."""
    wanted = {v.view for v in views(source) if v.populated}
    return [v for v in views(target) if v.view in wanted]


def unpopulated(source: Connection, target: Connection) -> list[TableName]:
    """Views populated on the source but not on the target."""
    return [v.view for v in to_refresh(source, target) if not v.populated]


def refresh(
    conn: Connection,
    view: ViewState,
    *,
    clock: Callable[[], float] = time.monotonic,
) -> Refreshed:
    """Refresh one view: CONCURRENTLY when it is populated and has a unique index."""
    started = clock()
    run(conn, refresh_statement(view))
    return Refreshed(view.view, view.populated and view.unique_index, clock() - started)


def refresh_statement(view: ViewState) -> sql.Composed:
    """REFRESH MATERIALIZED VIEW, CONCURRENTLY when it is populated and has a unique index."""
    concurrently = view.populated and view.unique_index
    return sql.SQL("REFRESH MATERIALIZED VIEW {}{}").format(
        sql.SQL("CONCURRENTLY ") if concurrently else sql.SQL(""), sql.Identifier(*view.view)
    )


def refresh_all(
    conn: Connection, wanted: list[ViewState], *, where: str, dry_run: bool
) -> list[Change]:
    """Refresh each view in turn, one log line each; what was done, with its time."""
    changes = []
    for number, view in enumerate(wanted, 1):
        if dry_run:
            changes.append(change(conn, refresh_statement(view), where=where, dry_run=True))
            continue
        log.info("refreshing %s (%d of %d)", view.label, number, len(wanted))
        done = refresh(conn, view)
        log.info("refreshed %s in %.0f ms", view.label, done.seconds * 1000)
        changes.append(Change(where, done.describe()))
    return changes
