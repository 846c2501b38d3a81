"""The Prometheus exporter: the only module that imports prometheus_client.

A move's metrics are read at scrape time: `MoveCollector` asks a reader for a
`Snapshot` of the servers and the ledger on every scrape and keeps nothing
between scrapes, so what Prometheus stores is never stale. The reader lives a
layer up (`cutover.observe`); this module only names and shapes the values.
The backfill's gauges are set by the running backfill, batch by batch.

Label values are the move's name, its databases, servers, phases, steps and
tables: bounded by the plan, never a secret, a DSN or a free text.
"""

from collections.abc import Callable, Iterable, Iterator

from prometheus_client import CollectorRegistry, Gauge, generate_latest, start_http_server
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
    StateSetMetricFamily,
)
from prometheus_client.registry import Collector

from cutover.errors import UsageError
from cutover.metrics import PHASES, Replication, Snapshot, StepSample
from cutover.types import TableState

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


def serve(port: int, address: str = "0.0.0.0", *, collector: Collector | None = None) -> None:
    """Expose the metrics over HTTP on `port`, in a background thread; with a move's collector."""
    if collector is not None:
        REGISTRY.register(collector)
    try:
        start_http_server(port, addr=address, registry=REGISTRY)
    except OSError as exc:
        raise UsageError(
            f"cannot serve metrics on {address}:{port}: {exc.strerror or exc}",
            hint="choose a free port with --metrics-port (or --port for `cutover metrics`)",
        ) from None


def exposition(collector: Collector) -> str:
    """One scrape of `collector` in the text format, as /metrics would serve it."""
    registry = CollectorRegistry()
    registry.register(collector)
    return generate_latest(registry).decode()


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


class MoveCollector(Collector):
    """Builds the move's metric families from a fresh snapshot on every scrape."""

    def __init__(self, move: str, read: Callable[[], Snapshot]) -> None:
        self._move = move
        self._read = read

    def describe(self) -> Iterable[Metric]:
        """Nothing up front: registering must not read the servers."""
        return ()

    def collect(self) -> Iterator[Metric]:
        """The move's metrics, read now."""
        snapshot = self._read()  # the reader serialises its own readings
        yield from _server_families(self._move, snapshot)
        yield from _replication_families(self._move, snapshot.replication)
        yield from _ledger_families(self._move, snapshot)


def _gauge(name: str, doc: str, labels: list[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=["move", *labels])


def _server_families(move: str, snapshot: Snapshot) -> Iterator[Metric]:
    up = _gauge("cutover_up", "1 when the server answered this scrape, 0 when not", ["server"])
    for server, answered in snapshot.servers.items():
        up.add_metric([move, server], 1.0 if answered else 0.0)
    took = _gauge("cutover_scrape_duration_seconds", "Time this scrape took to read the move", [])
    took.add_metric([move], snapshot.seconds)
    yield from (up, took)


_REPLICATION_GAUGES = (
    ("lag_bytes", "cutover_replication_lag_bytes", "WAL the target has not confirmed yet"),
    (
        "lag_seconds",
        "cutover_replication_lag_seconds",
        "Age of the oldest change the target has not confirmed (absent when unknown)",
    ),
    (
        "wal_retained_bytes",
        "cutover_slot_wal_retained_bytes",
        "WAL the source keeps for the move's slot",
    ),
    (
        "wal_safe_bytes",
        "cutover_slot_wal_safe_bytes",
        "WAL the slot may still retain before max_slot_wal_keep_size invalidates it",
    ),
    ("slot_active", "cutover_slot_active", "1 while a sender streams from the move's slot"),
    (
        "apply_errors",
        "cutover_apply_errors",
        "Times the target's apply worker failed since the subscription began (it retries)",
    ),
    (
        "apply_stopped",
        "cutover_apply_stopped",
        "1 while the target's apply worker is stopped by a failure (pglogical: subscription down)",
    ),
    (
        "schema_drift",
        "cutover_schema_drift",
        "Differences of the moved tables between source and target: tables, columns, "
        "tables not replicated (cutover sync-schema mends them)",
    ),
    (
        "streaming",
        "cutover_replication_streaming",
        "1 while the subscription is enabled and its slot streams, 0 when replication stopped",
    ),
    ("copy_bytes_done", "cutover_copy_bytes_done", "Bytes of the tables copied to the target"),
    ("copy_bytes_total", "cutover_copy_bytes_total", "Bytes of the tables to copy"),
    (
        "rows_target",
        "cutover_copy_rows_done",
        "Rows on the target, from statistics, plus rows a running COPY wrote",
    ),
    ("rows_source", "cutover_copy_rows_total", "Rows on the source, from statistics"),
    (
        "monitored_lag_seconds",
        "cutover_monitored_lag_seconds",
        "The managed service's own lag (DMS, from Cloud Monitoring): minutes old, never decides",
    ),
    (
        "monitored_lag_bytes",
        "cutover_monitored_lag_bytes",
        "The managed service's own lag in bytes (DMS, from Cloud Monitoring)",
    ),
    (
        "monitored_lag_age_seconds",
        "cutover_monitored_lag_sample_age_seconds",
        "Age of the managed service's last lag sample (Cloud Monitoring shows one 1-3 min late)",
    ),
)


def _replication_families(move: str, replication: list[Replication]) -> Iterator[Metric]:
    labels = ["database", "engine"]
    for attribute, name, doc in _REPLICATION_GAUGES:
        family = _gauge(name, doc, labels)
        for r in replication:
            value = getattr(r, attribute)
            if value is not None:
                family.add_metric([move, r.database, r.engine], float(value))
        yield family
    tables = _gauge("cutover_tables", "Replicated tables by sync state", [*labels, "state"])
    for r in replication:
        if r.tables is None:
            continue
        counts = dict.fromkeys(TableState, 0)
        for state, n in r.tables.items():
            counts[state] += n
        for state, n in counts.items():
            tables.add_metric([move, r.database, r.engine, state], float(n))
    yield tables
    service = _gauge(
        "cutover_service_state",
        "1 for the managed service's state and phase of the replication (a DMS job's)",
        [*labels, "state", "phase"],
    )
    for r in replication:
        if r.service_state is not None:
            service.add_metric(
                [move, r.database, r.engine, r.service_state, r.service_phase or ""], 1.0
            )
    yield service


def _ledger_families(move: str, snapshot: Snapshot) -> Iterator[Metric]:
    phase = StateSetMetricFamily(
        "cutover_phase", "The phase the move is in: the one of the step run last", labels=["move"]
    )
    phase.add_metric([move], {p: p == snapshot.phase for p in PHASES})
    yield phase

    step = StateSetMetricFamily(
        "cutover_step",
        "Per scope, the step of its current phase that ran last",
        labels=["move", "scope", "phase"],
    )
    by_scope: dict[str, list[StepSample]] = {}
    for s in snapshot.steps:
        by_scope.setdefault(s.scope, []).append(s)
    for scope, samples in by_scope.items():
        last = max(samples, key=lambda s: s.started_at)
        names = sorted({s.step for s in samples if s.phase == last.phase})
        step.add_metric([move, scope, last.phase], {n: n == last.step for n in names})
    yield step

    durations = _gauge(
        "cutover_step_duration_seconds",
        "How long the last run of each step took",
        ["scope", "phase", "step"],
    )
    for s in snapshot.steps:
        if s.seconds is not None:
            durations.add_metric([move, s.scope, s.phase, s.step], s.seconds)
    yield durations

    pause = _gauge(
        "cutover_write_pause_seconds",
        "How long the writers were stopped by the last switch or rollback",
        ["phase"],
    )
    fence = _gauge(
        "cutover_fence_to_promote_seconds",
        "From fencing the old side to promoting the new one, in the last switch or rollback",
        ["phase"],
    )
    for name, (writes_paused, fence_to_promote) in snapshot.pauses.items():
        pause.add_metric([move, name], writes_paused)
        fence.add_metric([move, name], fence_to_promote)
    yield from (pause, fence)

    rollbacks = CounterMetricFamily(
        "cutover_rollbacks",
        "Phases rolled back by themselves after a failure (a switch that did not finish)",
        labels=["move", "phase"],
    )
    for name in sorted({"switch", "rollback", *snapshot.rollbacks}):
        rollbacks.add_metric([move, name], float(snapshot.rollbacks.get(name, 0)))
    yield rollbacks

    mismatches = _gauge(
        "cutover_verify_mismatches",
        "Differences the last verification found: rows, or tables in count mode",
        ["database", "mode"],
    )
    for v in snapshot.verifications:
        mismatches.add_metric([move, v.database, v.mode], float(v.mismatches))
    yield mismatches
