"""Prometheus metrics: the only module that imports prometheus_client.

Label values are names of moves, databases and tables, never a secret.
"""

from prometheus_client import CollectorRegistry, Gauge, start_http_server

REGISTRY = CollectorRegistry()

_BACKFILL_LABELS = ("move", "database", "table")
BACKFILL_ROWS_DONE = Gauge(
    "cutover_backfill_rows_done",
    "Rows numbered by the running backfill of a table",
    _BACKFILL_LABELS,
    registry=REGISTRY,
)
BACKFILL_ROWS_TOTAL = Gauge(
    "cutover_backfill_rows_total",
    "Rows of the table when its backfill started (the planner's estimate)",
    _BACKFILL_LABELS,
    registry=REGISTRY,
)
BACKFILL_PAGES_DONE = Gauge(
    "cutover_backfill_pages_done",
    "Pages of the table the backfill has passed",
    _BACKFILL_LABELS,
    registry=REGISTRY,
)
BACKFILL_PAGES_TOTAL = Gauge(
    "cutover_backfill_pages_total",
    "Pages of the table the backfill passes over",
    _BACKFILL_LABELS,
    registry=REGISTRY,
)


def serve(port: int, address: str = "0.0.0.0") -> None:
    """Expose the metrics over HTTP on `port`, in a background thread."""
    start_http_server(port, addr=address, registry=REGISTRY)


def backfill_progress(
    move: str,
    database: str,
    table: str,
    *,
    rows_done: int,
    rows_total: int,
    pages_done: int,
    pages_total: int,
) -> None:
    """Set the backfill gauges of one table."""
    labels = (move, database, table)
    BACKFILL_ROWS_DONE.labels(*labels).set(rows_done)
    BACKFILL_ROWS_TOTAL.labels(*labels).set(rows_total)
    BACKFILL_PAGES_DONE.labels(*labels).set(pages_done)
    BACKFILL_PAGES_TOTAL.labels(*labels).set(pages_total)
