"""The command line: parsing, printing, prompts and exit codes. The only place that prints.

The commands' work is in cutover/api.py: each command here parses its
options, asks what must be confirmed, calls its api function with callbacks
that draw progress, and renders the typed result (tables, or --json).
Every command catches `CutoverError` in one spot (`main`), prints `FAILED:` (or
`WARNING:`) and `hint:` and exits with the error's code: 0 success, 1 a failure or
blockers, 2 a usage, plan or connection error, 3 a switch done whose writers did
not report healthy (or whose counts differ, or whose new primary's backup
failed). A database error arrives translated into one; its traceback is shown
with --verbose. Any other exception is a bug and keeps its traceback.
"""

import atexit
import json
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console, Group
from rich.live import Live
from rich.progress import (
    BarColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table
from rich.text import Text

from cutover import __version__, api, lab, load, log, preflight, runner, verify
from cutover.errors import CutoverError, UsageError
from cutover.plan import Plan, parse_table
from cutover.plan import load as load_plan
from cutover.state import DatabaseState, MoveState
from cutover.steps import Outcome
from cutover.types import SyncProgress, TableName

app = typer.Typer(
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode="rich",
    help="Move a live PostgreSQL database to another server with seconds of write pause.",
)
lab_app = typer.Typer(no_args_is_help=True, help="Two local PostgreSQL servers to try a move on.")
app.add_typer(lab_app, name="lab")

out = Console(highlight=False)
err = Console(stderr=True, highlight=False)

PlanOption = Annotated[
    Path,
    typer.Option(
        "--plan",
        "-p",
        envvar="CUTOVER_PLAN",
        help="The move's plan (YAML). Also from CUTOVER_PLAN.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")]
DryRunOption = Annotated[
    bool, typer.Option("--dry-run", help="Print the SQL that would run; change nothing.")
]
MetricsPortOption = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=1,
        max=65535,
        help="Serve the move's Prometheus metrics on this port while the command runs "
        "(what `cutover metrics` serves).",
        show_default=False,
    ),
]
LabDirOption = Annotated[
    Path,
    typer.Option("--dir", envvar="CUTOVER_LAB_DIR", help="The lab's folder. Also CUTOVER_LAB_DIR."),
]
STATUS_STYLE = {"OK": "green", "WARN": "yellow", "FAIL": "bold red"}
OUTCOME_STYLE = {
    Outcome.APPLIED: "green",
    Outcome.ADOPTED: "cyan",
    Outcome.SKIPPED: "dim",
    Outcome.PLANNED: "yellow",
    Outcome.FAILED: "bold red",
    Outcome.UNDONE: "magenta",
}


def _version(value: bool) -> None:
    if value:
        out.print(f"cutover {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every step.")] = False,
    log_format: Annotated[
        str, typer.Option("--log-format", help="text or json (logs go to stderr).")
    ] = "text",
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Move a live PostgreSQL database to another server with seconds of write pause.

    A move: check, prepare, start, switch, verify, cleanup, all driven by one plan file.
    Try it on two local servers: `cutover lab up`, then `cutover check -p .lab/plan.yaml`.
    """
    if log_format not in ("text", "json"):
        raise typer.BadParameter("use text or json", param_hint="--log-format")
    log.setup(verbose=verbose, json_format=log_format == "json")


# -- check ------------------------------------------------------------------------------------


@app.command()
def check(plan_path: PlanOption, as_json: JsonOption = False) -> None:
    """Read-only preflight: every check, each OK/WARN/FAIL with a hint and the fix to run.

    Exit code 0: ready (warnings allowed). 1: blockers. 2: plan or connection error.
    """
    plan = load_plan(plan_path)
    report = api.check(plan)
    if as_json:
        out.print_json(json.dumps(report.to_dict()))
    else:
        _print_report(plan, report)
    raise typer.Exit(0 if report.ready else 1)


def _print_report(plan: Plan, report: preflight.Report) -> None:
    table = Table(title=f"preflight of move '{plan.move}' ({plan.engine.value} engine)")
    table.add_column("", no_wrap=True)
    table.add_column("where", no_wrap=True)
    table.add_column("check", no_wrap=True)
    table.add_column("finding")
    for f in report.findings:
        table.add_row(
            f"[{STATUS_STYLE[f.status]}]{f.status}[/]", f.scope, f.check, _escape(f.detail)
        )
    out.print(table)
    for f in report.findings:
        if f.status is preflight.Status.OK or not (f.hint or f.fix):
            continue
        style = STATUS_STYLE[f.status]
        out.print(f"\n[{style}]{f.status}[/] {f.scope} {f.check}: {_escape(f.hint)}")
        for statement in f.fix:
            out.print(f"    {_escape(statement)}", soft_wrap=True)
    blockers, warnings = len(report.blockers), len(report.warnings)
    verdict = "[green]READY[/]" if report.ready else "[bold red]NOT READY[/]"
    out.print(f"\n{verdict}: {blockers} blockers, {warnings} warnings")


def _escape(text: str) -> str:
    return text.replace("[", r"\[")


# -- prepare and start ------------------------------------------------------------------------


@app.command("prepare")
def prepare_command(
    plan_path: PlanOption,
    restart: Annotated[
        bool,
        typer.Option(
            "--restart",
            help="If wal_level must change, restart the source with source.restart from the "
            "plan: the one downtime of a move.",
        ),
    ] = False,
    yes: Annotated[
        bool,
        typer.Option(
            "--yes",
            "-y",
            help="Apply the Terraform plan of the source's flags (with a terraform section); "
            "without it the plan is shown, nothing is applied, and the command exits 4.",
        ),
    ] = False,
    dry_run: DryRunOption = False,
) -> None:
    """Make both sides ready: primary keys, logical decoding, replication role, schema, publication.

    First every source table without a primary key or replica identity gets
    one (see `cutover backfill`). Safe to run again: what is already done is
    skipped, what was done but not recorded is adopted. With --dry-run, prints
    the SQL and changes nothing. With a terraform section in the plan, the
    source's flags are set through Terraform first (docs/terraform.md).
    """
    plan = load_plan(plan_path)
    with _backfill_progress() as on_fill:
        ran = api.prepare(
            plan,
            restart=restart,
            approved=yes,
            dry_run=dry_run,
            on_step=_show,
            on_fill=on_fill,
        )
    _dry_run_note(ran)


@app.command("backfill")
def backfill_command(
    plan_path: PlanOption,
    tables: Annotated[
        list[str] | None,
        typer.Option(
            "--table",
            "-t",
            help="Only this table (schema.table, quoted as SQL quotes it); may be repeated. "
            "Default: backfill.tables of the plan, or every table without a key.",
        ),
    ] = None,
    metrics_port: MetricsPortOption = None,
    dry_run: DryRunOption = False,
) -> None:
    """Add a primary key to source tables that have none, without blocking their writers.

    A bigint column (backfill.column, default cutover_id) with its own
    sequence; existing rows numbered in batches of pages, each its own short
    transaction; NOT NULL through a validated check; a unique index built
    CONCURRENTLY; then the primary key. No statement waits for a lock longer
    than thresholds.lock_timeout. Killed at any point, it resumes and never
    renumbers a row. `cutover cleanup` drops exactly what it added.
    """
    plan = load_plan(plan_path)
    chosen = _tables(tables)
    api.serve_metrics(plan, metrics_port)
    with _backfill_progress() as on_fill:
        ran = api.backfill(plan, tables=chosen, dry_run=dry_run, on_step=_show, on_fill=on_fill)
    _dry_run_note(ran)
    if not ran.tables:
        out.print("every table has a primary key or a replica identity: nothing to backfill")


def _tables(given: list[str] | None) -> list[TableName] | None:
    """The --table options as (schema, name); None when none was given."""
    try:
        return [parse_table(t) for t in given] if given else None
    except ValueError as exc:
        raise UsageError(str(exc), hint="e.g. --table public.events") from None


@contextmanager
def _backfill_progress() -> Iterator[api.OnFill]:
    """A bar per table being numbered: pages done, rows numbered, rows/s, ETA."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeRemainingColumn(),
    )
    # Started with the first table: a prepare with nothing to number shows no bar.
    bars = Progress(*columns, console=out, transient=False)
    tasks: dict[tuple[str, str], TaskID] = {}

    def update(db: str, table: str, progress: api.FillProgress) -> None:
        if not tasks:
            bars.start()
        if (db, table) not in tasks:
            tasks[db, table] = bars.add_task(_escape(table), total=None, detail="")
        rate = progress.rows / progress.seconds if progress.seconds else 0.0
        bars.update(
            tasks[db, table],
            total=max(progress.pages_total, 1),
            completed=min(progress.pages_done, progress.pages_total),
            detail=f"{progress.rows:,} rows, {rate:,.0f} rows/s",
        )

    try:
        yield update
    finally:
        if tasks:
            bars.stop()


@app.command("start")
def start_command(
    plan_path: PlanOption,
    *,
    wait: Annotated[
        bool,
        typer.Option(
            "--wait",
            help="Run in the foreground with progress bars until the target is caught up.",
        ),
    ] = False,
    parallel: Annotated[
        int,
        typer.Option(
            "--parallel",
            "-j",
            min=1,
            max=64,
            help="Tables (or parts of a table over 1 GiB) copied at a time, and indexes "
            "built at a time. More jobs load both servers more.",
        ),
    ] = 2,
    recopy: Annotated[
        bool,
        typer.Option(
            "--recopy",
            help="Copy anew, for a move whose changes were lost to the target (its slot "
            "dropped or invalidated): drop the subscription and the slot, empty the target's "
            "tables, then start as the first time. Refused once the switch promoted the target.",
        ),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", "-y", help="Do not ask before --recopy empties the tables.")
    ] = False,
    metrics_port: MetricsPortOption = None,
    dry_run: DryRunOption = False,
) -> None:
    """Copy the data, build the indexes, then stream the source's changes to the target.

    The copy reads every table in the snapshot the move's slot starts from, so
    the changes streamed afterwards join it exactly. Indexes and constraints
    are built after the copy, which is faster than keeping them up to date
    during it.

    Without --wait the work goes on in the background: start prints the
    process and its log, and `cutover status --watch` follows it. A copy
    interrupted by a crash starts over when start runs again (the snapshot
    does not outlive the process); every later step resumes where it stopped.
    """
    plan = load_plan(plan_path)
    if recopy:
        _confirm(
            f"Empty the moved tables of {', '.join(plan.databases)} on the target "
            f"({plan.target.address}) and copy them anew?",
            yes=yes,
            dry_run=dry_run,
        )
    if not wait and not dry_run:
        started = api.start_in_background(
            plan, plan_path, jobs=parallel, metrics_port=metrics_port, recopy=recopy
        )
        if started.exit_code is None:
            out.print(
                f"started in the background (pid {started.pid}); its log: {started.log}\n"
                "follow it with `cutover status --watch`; `cutover start --wait` shows the end"
            )
            return
        (out if started.exit_code == 0 else err).print(started.tail, markup=False)
        raise typer.Exit(started.exit_code)
    if dry_run:
        ran = api.start(plan, jobs=parallel, dry_run=True, recopy=recopy, on_step=_show)
        _dry_run_note(ran)
        return
    api.serve_metrics(plan, metrics_port)
    with _copy_progress() as (on_copy, on_lag):
        api.start(
            plan,
            jobs=parallel,
            dry_run=False,
            recopy=recopy,
            on_step=_show,
            on_copy=on_copy,
            on_lag=on_lag,
        )


@contextmanager
def _copy_progress() -> Iterator[
    tuple[Callable[[str, SyncProgress], None], Callable[[str, int], None]]
]:
    """Progress bars per database: tables copied and bytes with rate and ETA, then the lag."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=out, transient=False) as bars:
        tasks: dict[str, TaskID] = {}

        def task(db: str) -> TaskID:
            if db not in tasks:
                tasks[db] = bars.add_task(_escape(db), total=None, detail="")
            return tasks[db]

        def copied(db: str, progress: SyncProgress) -> None:
            bars.update(
                task(db),
                total=max(progress.bytes_total, 1),
                completed=progress.bytes_done,
                detail=f"{progress.ready}/{len(progress.tables)} tables",
            )

        def lag(db: str, behind: int) -> None:
            bars.update(task(db), detail=f"catching up: {_bytes(behind)} behind")

        yield copied, lag


def _confirm(question: str, *, yes: bool, dry_run: bool) -> None:
    """Ask before changing the world, unless --yes or --dry-run."""
    if not dry_run and not yes:
        typer.confirm(question, abort=True)


def _show(report: runner.StepReport) -> None:
    style = OUTCOME_STYLE[report.outcome]
    out.print(
        f"[{style}]{report.outcome.value:>8}[/] {_escape(report.key)} "
        f"[dim]{report.seconds * 1000:.0f} ms[/]"
    )
    for change in report.changes:
        action = change.action.replace("\n", "\n" + " " * 11)
        out.print(f"           [dim]{change.where}:[/] {_escape(action)}", soft_wrap=True)


def _dry_run_note(ran: api.Ran) -> None:
    if ran.dry_run:
        out.print("[yellow]dry run: nothing was changed[/]")


# -- switch -----------------------------------------------------------------------------------


@contextmanager
def _readiness_line() -> Iterator[tuple[api.OnReady, api.OnStep]]:
    """A live line while the switch waits for a quiet lag; gone when the first step reports."""
    live = Live(console=out, transient=True, auto_refresh=False)

    def on_ready(ready: api.Readiness) -> None:
        lags = ", ".join(f"{db} {_bytes(n)}" for db, n in ready.lag.items())
        held = min(ready.held_for, ready.window)
        text = (
            f"waiting for the lag to stay under {_bytes(ready.limit)} for {ready.window:g} s: "
            f"{lags}; held {held:.0f} s"
        )
        if not live.is_started:
            live.start()
        live.update(Text(text, style="dim"), refresh=True)

    def on_step(report: runner.StepReport) -> None:
        if live.is_started:
            live.stop()
        _show(report)

    try:
        yield on_ready, on_step
    finally:
        if live.is_started:
            live.stop()


@app.command("switch")
def switch_command(
    plan_path: PlanOption,
    *,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    keep_fallback: Annotated[
        bool,
        typer.Option(
            "--keep-fallback",
            help="Replicate target to source after the switch, so `cutover rollback` can go back.",
        ),
    ] = False,
    abandon: Annotated[
        bool,
        typer.Option(
            "--abandon",
            help="Give up a switch that was interrupted before the promotion: lift the fence "
            "and start the writers again on the source (replication goes on).",
        ),
    ] = False,
    metrics_port: MetricsPortOption = None,
    dry_run: DryRunOption = False,
) -> None:
    """Move the writes to the target, with seconds of write pause.

    First waits until the lag has stayed under thresholds.max_switch_lag for
    lag_window (a spike starts the window again; after ready_timeout it fails,
    nothing stopped), and sets the target's sequences ahead. Then stops the
    writer tiers, fences the source, proves zero lag with a barrier row, sets the
    sequences that moved since, promotes the target, repoints the connection
    strings and starts the writers again. Any failure before the promotion rolls
    back by itself and exits 1 with the reason. After it, row counts are compared
    as they stood at the barrier, and each writer's health probe is asked: a
    difference or an unhealthy writer is a warning (exit 3), nothing is undone
    (the data is on the target); run switch again once it is fixed. With engine
    dms the new primary's backups and point-in-time recovery are turned on and
    its first backup taken after the writers are back: one that fails is a
    warning (exit 3) too.

    A switch interrupted before the promotion (killed, its machine lost) is
    finished by running it again, or given up with --abandon.
    """
    plan = load_plan(plan_path)
    if abandon:
        _confirm(
            f"Abandon the interrupted switch of move '{plan.move}'? The fence is lifted and "
            "the writers start again on the source",
            yes=yes,
            dry_run=dry_run,
        )
        ran = api.abandon_switch(plan, dry_run=dry_run, on_step=_show)
        _dry_run_note(ran)
        if not dry_run:
            out.print("[green]abandoned[/]: the source takes the writes again; replication goes on")
        return
    _confirm(
        f"Switch move '{plan.move}' ({', '.join(plan.databases)}) to "
        f"{plan.target.describe()}? The writers stop for a few seconds",
        yes=yes,
        dry_run=dry_run,
    )
    if not dry_run:
        api.serve_metrics(plan, metrics_port)
    with _readiness_line() as (on_ready, on_step):
        switched = api.switch(
            plan, keep_fallback=keep_fallback, dry_run=dry_run, on_step=on_step, on_ready=on_ready
        )
    _dry_run_note(switched)
    if switched.pause:
        out.print(
            f"[green]switched[/]: writes paused {switched.pause.writes_paused:.2f} s "
            f"(fence to promote {switched.pause.fence_to_promote * 1000:.0f} ms)"
        )


# -- rollback ---------------------------------------------------------------------------------


@app.command("rollback")
def rollback_command(
    plan_path: PlanOption,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    dry_run: DryRunOption = False,
) -> None:
    """Go back to the source after a switch made with --keep-fallback.

    The same protocol the other way: stop writers, fence the target, barrier,
    sequences, counts, promote the source, give its roles LOGIN back, repoint,
    start the writers. Nothing written on the target is lost: the fallback
    replication carried it to the source.
    """
    plan = load_plan(plan_path)
    _confirm(
        f"Roll move '{plan.move}' back to {plan.source.describe()}? "
        "The writers stop for a few seconds",
        yes=yes,
        dry_run=dry_run,
    )
    with _readiness_line() as (on_ready, on_step):
        rolled_back = api.rollback(plan, dry_run=dry_run, on_step=on_step, on_ready=on_ready)
    _dry_run_note(rolled_back)
    if rolled_back.pause:
        out.print(f"[green]rolled back[/]: writes paused {rolled_back.pause.writes_paused:.2f} s")


# -- cleanup ----------------------------------------------------------------------------------


@app.command("cleanup")
def cleanup_command(
    plan_path: PlanOption,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    retire_source: Annotated[
        bool,
        typer.Option(
            "--retire-source",
            help="Then destroy the old instance through Terraform (the plan's terraform "
            "section): a final backup, its deletion protection lifted, its resource alone "
            "destroyed. Only after the switch.",
        ),
    ] = False,
    dry_run: DryRunOption = False,
) -> None:
    """Remove what the move put on the servers: subscription, slot, publication, role, barrier.

    Refuses while a switch is half done. Before a switch it abandons the move
    (the target keeps what was copied). Works when the old source is read-only.
    """
    plan = load_plan(plan_path)
    retired = (
        f", then destroy the old instance {plan.terraform.source_address} through Terraform"
        if retire_source and plan.terraform is not None
        else ""
    )
    _confirm(
        f"Remove move '{plan.move}' objects (subscription, slot, publication, role "
        f"cutover_{plan.move}, _cutover schema) from both servers{retired}?",
        yes=yes,
        dry_run=dry_run,
    )
    _dry_run_note(api.cleanup(plan, dry_run=dry_run, retire_source=retire_source, on_step=_show))


@app.command("sync-schema")
def sync_schema_command(
    plan_path: PlanOption,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    dry_run: DryRunOption = False,
) -> None:
    """Carry a schema change made on the source while the move streams.

    Replication carries rows, not DDL: after ALTER TABLE ... ADD COLUMN on the
    source the target's apply stops, and a table made after start is not
    replicated (`cutover status` lists this as schema drift; the switch refuses
    it). For each database this makes the target's moved tables like the
    source's: tables it lacks are made as pg_dump of the source defines them,
    columns are added, changed or dropped (a new column's existing rows get
    the value they have on the source), then new tables are added to the
    replication, which copies their rows and streams their changes. Only the
    target's schema and the move's own publication or set change.
    """
    plan = load_plan(plan_path)
    _confirm(
        f"Change the moved tables on the target ({plan.target.address}) to match the source's?",
        yes=yes,
        dry_run=dry_run,
    )
    _dry_run_note(api.sync_schema(plan, dry_run=dry_run, on_step=_show))


# -- status -----------------------------------------------------------------------------------


@app.command()
def status(
    plan_path: PlanOption,
    as_json: JsonOption = False,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Refresh every 2 seconds until Ctrl-C.")
    ] = False,
    metrics_port: MetricsPortOption = None,
) -> None:
    """Where the move stands: each step from the ledger, and live replication per database.

    Lag is measured from the source's current WAL position to what the target
    has confirmed. A slot close to being invalidated (max_slot_wal_keep_size) is
    flagged. The ledger is shown even when the servers cannot be reached.
    """
    plan = load_plan(plan_path)
    if as_json:
        out.print_json(json.dumps(_status_data(api.status(plan))))
        return
    if not watch:
        out.print(_status_view(api.status(plan)))
        return
    api.serve_metrics(plan, metrics_port)
    with Live(console=out, auto_refresh=False) as live:
        try:
            while True:
                live.update(_status_view(api.status(plan)), refresh=True)
                time.sleep(2)
        except KeyboardInterrupt:
            pass


def _status_data(move: MoveState) -> dict[str, Any]:
    """`status --json`: the move's state, keyed as scripts have read it."""
    ledger = move.ledger
    assert ledger is not None  # the command reads the ledger before the servers
    data: dict[str, Any] = {
        "move": move.move,
        "ledger": ledger.where,
        "phase": ledger.phase,
        "interrupted": list(ledger.interrupted),
        "steps": [asdict(s.record) for s in ledger.steps],
        "switched": ledger.switched,
        "servers": {str(side): up for side, up in move.servers.items()},
        "fenced_roles": None if move.fenced_roles is None else list(move.fenced_roles),
        "databases": {db: _database_data(d) for db, d in move.databases.items()},
    }
    if move.problems:
        data["servers_error"] = "; ".join(move.problems)
    return data


def _database_data(db: DatabaseState) -> dict[str, Any]:
    facts, lag, progress = db.replication, db.replication.lag, db.replication.progress
    return {
        "replicating": facts.replicating,
        "copying": facts.copying,
        "streaming": facts.streaming,
        "switched": db.switched,
        "target_exists": db.target_exists,
        "engine": facts.description,
        "tables": None if progress is None else progress.by_state,
        "table_states": None if progress is None else progress.tables,
        "tables_total": None if progress is None else len(progress.tables),
        "copy_bytes_done": None if progress is None else progress.bytes_done,
        "copy_bytes_total": None if progress is None else progress.bytes_total,
        "slot": None
        if lag is None
        else {
            "lag_bytes": lag.bytes,
            "lag_seconds": lag.seconds,
            "retained_bytes": lag.retained_bytes,
            "wal_status": lag.retention,
            "safe_wal_size": lag.safe_bytes,
            "active": lag.connected,
            "lost": lag.lost,
            "measured_at": lag.measured_at,
        },
        "apply_errors": facts.apply_errors,
        "apply_stopped": facts.apply_stopped,
        "schema_drift": None if db.drift is None else list(db.drift),
        "rows_source": db.rows_source,
        "rows_target": db.rows_target,
        "materialized_views": None if db.views is None else asdict(db.views),
    }


def _status_view(move: MoveState) -> Group:
    parts: list[Any] = []
    ledger = move.ledger
    assert ledger is not None  # the command reads the ledger before the servers
    if ledger.steps:
        table = Table(title=f"move '{move.move}'", caption=f"ledger: {ledger.where}")
        for column in ("step", "state", "started", "took", "runs", "error"):
            table.add_column(column)
        for s in ledger.steps:
            r = s.record
            style = {"failed": "red", "running": "yellow"}.get(r.status.value, "")
            table.add_row(
                _escape(r.key),
                f"[{style}]{r.status.value}[/]" if style else r.status.value,
                r.started_at.replace("T", " ")[:19],
                f"{r.seconds * 1000:.0f} ms" if r.seconds is not None else "",
                str(r.runs),
                _escape(r.error or ""),
            )
        parts.append(table)
    else:
        parts.append(f"move '{move.move}': nothing has run yet (ledger: {ledger.where})")
    if ledger.interrupted:
        parts.append(
            "[bold red]INTERRUPTED:[/] a run stopped during "
            + _escape(", ".join(ledger.interrupted))
            + ": run the same command again to resume"
        )
    fenced = move.fenced_roles
    if fenced and not ledger.switched:
        parts.append(
            "[bold red]FENCED:[/] "
            + _escape(", ".join(fenced))
            + " cannot log in to the source and the switch has not promoted the target: "
            "run `cutover switch` again, it finishes where it stopped"
        )
    elif fenced:
        parts.append(f"source retired: {_escape(', '.join(fenced))} stay fenced there")
    for problem in move.problems:
        parts.append(f"[yellow]not read:[/] {_escape(problem)}")
    for db, info in move.databases.items():
        parts.append(_escape(_replication_line(db, info)))
    return Group(*parts)


def _replication_line(db: str, info: DatabaseState) -> str:
    line = _replication_state(db, info)
    views = info.views
    if views and views.populated_on_source:
        missing = views.unpopulated_on_target
        line += f"; materialized views: {len(views.populated_on_source) - len(missing)} of "
        line += f"{len(views.populated_on_source)} populated on the target"
        if missing:
            line += " (not yet: " + ", ".join(missing) + ")"
    return line


def _replication_state(db: str, info: DatabaseState) -> str:
    facts = info.replication
    if info.switched:
        return f"{db}: switched; the target is promoted and the source no longer replicates"
    if not facts.moving:
        if facts.subscribed is None or facts.slot_exists is None:
            return f"{db}: replication not read (see above)"
        return f"{db}: not replicating yet (`cutover start`)"
    progress = facts.progress
    if progress is None:
        tables = "tables not read"
    else:
        states = ", ".join(f"{n} {state}" for state, n in sorted(progress.by_state.items()))
        tables = f"{len(progress.tables)} tables ({states})"
    if facts.copying:
        done, total = (progress.bytes_done, progress.bytes_total) if progress else (0, 0)
        line = f"{db}: initial copy, {_bytes(done)} of {_bytes(total)}; {tables}"
    elif facts.replicating:
        line = f"{db}: {tables}"
        if facts.streaming is False:
            line += "; the subscription is disabled: no change is applied"
    else:  # the slot is there; the target did not say whether it subscribes
        line = f"{db}: the subscription was not read"
    if facts.description:
        line += f"; {facts.description}"
    lag = facts.lag
    if lag is None:
        if facts.slot_exists is False:
            return line + (
                "; the replication slot is missing on the source: the changes since are lost "
                "to the target; `cutover start --recopy` copies it anew"
            )
        return line + "; the replication slot was not read"
    seconds = "?" if lag.seconds is None else f"{lag.seconds:.1f} s"
    line += (
        f"; lag {_bytes(lag.bytes)}, {seconds}; WAL retained "
        f"{_bytes(lag.retained_bytes or 0)} ({lag.retention})"
    )
    waiting = [
        f"{t} ({state.label})"
        for t, state in (progress.tables.items() if progress else ())
        if not state.is_ready
    ]
    if waiting:
        shown = ", ".join(waiting[:10]) + (
            f" and {len(waiting) - 10} more" if len(waiting) > 10 else ""
        )
        line += f"; not ready yet: {shown}"
    if facts.apply_stopped:
        line += (
            "; the apply worker is stopped by a failure: nothing is applied (the target's "
            "log says why)"
        )
    if facts.apply_errors:
        line += (
            f"; the apply worker failed {facts.apply_errors} times since the subscription "
            "began (the target's log says why; it retries)"
        )
    if info.drift:
        shown = "; ".join(info.drift[:5]) + (
            f" and {len(info.drift) - 5} more" if len(info.drift) > 5 else ""
        )
        line += f"; schema drift: {shown} (`cutover sync-schema` mends it)"
    if lag.lost:
        line += (
            " WARNING: the slot was invalidated by max_slot_wal_keep_size: the changes since "
            "are lost to the target; `cutover start --recopy` copies it anew"
        )
    elif facts.slot_at_risk:
        line += " WARNING: the slot is close to being invalidated by max_slot_wal_keep_size"
    return line


def _bytes(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(n) < 1024:
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return f"{n:.1f} TB"


# -- verify -----------------------------------------------------------------------------------


@app.command("verify")
def verify_command(
    plan_path: PlanOption,
    *,
    mode: Annotated[
        verify.Mode,
        typer.Option(
            "--mode",
            "-m",
            help="count: exact row counts. checksum: every row's content, by chunks of keys.",
        ),
    ] = verify.Mode.CHECKSUM,
    tables: Annotated[
        list[str] | None,
        typer.Option(
            "--table",
            "-t",
            help="Only this table (schema.table, quoted as SQL quotes it); may be repeated.",
        ),
    ] = None,
    jobs: Annotated[
        int, typer.Option("--jobs", "-j", min=1, max=64, help="Tables compared at a time.")
    ] = 2,
    max_keys: Annotated[
        int, typer.Option("--max-keys", min=0, help="Differing keys listed per table.")
    ] = 20,
    as_json: JsonOption = False,
) -> None:
    """Compare every replicated table, source against target: exit 0 equal, 1 differ, 2 error.

    Both servers are read at the same time, each in one snapshot. While the
    move replicates, the target is read only after it applied a barrier
    written after the source's snapshot, and rows that changed meanwhile are
    read again, so a running move is verified without false differences.
    Values are compared by meaning: 1.50 equals 1.5, timestamps are compared
    in UTC, json by content; NULL never equals ''. In checksum mode a table
    without a primary key is compared by row count. Run checksum before
    `cutover cleanup` retires the old server.
    """
    plan = load_plan(plan_path)
    report = api.verify(
        plan,
        mode=mode,
        tables=_tables(tables),
        jobs=jobs,
        max_keys=max_keys,
        on_table=(lambda _: None) if as_json else _verify_line,
    )
    if as_json:
        out.print_json(json.dumps(_verify_data(report), default=str))
    else:
        out.print(_verify_view(report))
    if report.errors:
        raise typer.Exit(2)
    if report.differences:
        raise typer.Exit(1)


def _verify_line(result: verify.TableResult) -> None:
    """A line per table as its first pass ends: progress on a long verification.

    The verdict comes with the summary: rows that differ are read again first.
    """
    done = f"{result.source_rows or 0:,} rows read" if result.error is None else "error"
    err.print(f"  {_escape(result.database)} {_escape(result.table)}: {done}")


def _verify_data(report: verify.Report) -> dict[str, Any]:
    """`verify --json`: the report, each table also by the name SQL spells."""
    return {
        "mode": report.mode.value,
        "equal": report.differences == 0 and report.errors == 0,
        "differences": report.differences,
        "errors": report.errors,
        "seconds": round(report.seconds, 3),
        "consistent_points": report.points,
        "tables": [{**asdict(t), "table": t.table} for t in report.tables],
    }


def _verify_view(report: verify.Report) -> Group:
    table = Table(title=f"verify ({report.mode.value}), {report.seconds:.1f} s")
    several = len(report.points) > 1
    for column in ("table", "source rows", "target rows", "chunks", "result"):
        table.add_column(column, justify="right" if "rows" in column else "left")
    for t in report.tables:
        if t.error:
            result = f"[bold red]error:[/] {_escape(t.error)}"
        elif t.differences:
            result = f"[bold red]{t.differences:,} differ[/]"
        else:
            result = "[green]equal[/]"
        if t.note:
            result += f" [dim]({_escape(t.note)})[/]"
        chunks = f"{t.chunks_differ}/{t.chunks} differ" if t.chunks_differ else str(t.chunks or "")
        table.add_row(
            _escape(f"{t.database}: {t.table}" if several else t.table),
            "" if t.source_rows is None else f"{t.source_rows:,}",
            "" if t.target_rows is None else f"{t.target_rows:,}",
            chunks,
            result,
        )
    parts: list[Any] = [table]
    for db, point in report.points.items():
        parts.append(f"[dim]{_escape(db)}: {_escape(point)}[/]")
    for t in report.tables:
        if not t.keys:
            continue
        listed = ", ".join(f"{d.kind} {d.key if len(d.key) > 1 else d.key[0]!r}" for d in t.keys)
        more = f" (first {len(t.keys)} of {t.differences:,})" if t.differences > len(t.keys) else ""
        parts.append(f"{_escape(t.database)} {_escape(t.table)}{more}: {_escape(listed)}")
        parts.append(f"  [dim]see them on either side:[/] {_escape(t.show or '')}")
    if report.errors:
        parts.append(f"[bold red]{report.errors} tables could not be compared[/]")
    elif report.differences:
        parts.append(f"[bold red]{report.differences:,} differences[/]")
    else:
        parts.append(f"[green]source and target are equal ({len(report.tables)} tables)[/]")
    return Group(*parts)


# -- metrics ----------------------------------------------------------------------------------


@app.command("metrics")
def metrics_command(
    plan_path: PlanOption,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to serve on.")] = 9187,
    address: Annotated[str, typer.Option("--address", help="Address to listen on.")] = "0.0.0.0",
    once: Annotated[
        bool, typer.Option("--once", help="Print one scrape to standard output and exit.")
    ] = False,
) -> None:
    """Serve the move's Prometheus metrics at /metrics until Ctrl-C.

    Replication lag (bytes, seconds), WAL retained by the move's slot, tables
    by sync state, bytes and rows copied, the phase and step, step durations,
    the last switch's write pause, rollbacks, and cutover_up per server. Every
    scrape reads the servers and the ledger anew; a server that does not
    answer shows as cutover_up 0 and the exporter keeps serving.
    `docs/observability.md` lists the metrics, the dashboard and the alerts.
    """
    plan = load_plan(plan_path)
    if once:
        sys.stdout.write(api.scrape(plan))  # as served: no wrapping, no markup
        return
    api.serve_metrics(plan, port, address)
    out.print(
        f"serving move '{plan.move}' metrics on http://{address}:{port}/metrics; Ctrl-C stops"
    )
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass


# -- lab --------------------------------------------------------------------------------------


@lab_app.command("up")
def lab_up(
    directory: LabDirOption = Path(".lab"),
    sample: Annotated[
        bool, typer.Option("--sample/--no-sample", help="Load the sample database 'app'.")
    ] = True,
    managed: Annotated[
        bool,
        typer.Option(
            "--managed",
            help="Reach the source as 'cutover_admin', no superuser (CREATEROLE, CREATEDB, "
            "REPLICATION, member of the tables' owner 'shop'), as on Cloud SQL or RDS. "
            "Chosen when the lab is created.",
        ),
    ] = False,
    with_pgbouncer: Annotated[
        bool,
        typer.Option(
            "--pgbouncer",
            help="Put a PgBouncer (the machine's pgbouncer) between the write load and the "
            "servers; the plan pauses it and repoints it instead of the load. "
            "Chosen when the lab is created.",
        ),
    ] = False,
) -> None:
    """Start two local PostgreSQL 15 servers (source, target) and write a ready plan.

    The sample database 'app' belongs to the application's role 'shop'; the role
    'app_writer' writes to it with grants only; `cutover lab load` writes as both.
    """
    the_lab = lab.Lab(directory)
    with err.status("starting the lab servers..."):
        state = the_lab.up(sample=sample, managed=managed, with_pgbouncer=with_pgbouncer)
    for instance in state.instances:
        out.print(
            f"{instance.name:>6}: postgresql://postgres@127.0.0.1:{instance.port}/postgres "
            f"[dim](password in {the_lab.password_file})[/]"
        )
    if state.pglogical:
        out.print("pglogical: preloaded")
    if state.managed:
        out.print(f"source plan user: {lab.CONTROLLER_ROLE} (no superuser)")
    _print_pool(the_lab)
    out.print(f"plan: {the_lab.plan_file}")
    out.print(f"next: cutover check -p {the_lab.plan_file}")


@lab_app.command("down")
def lab_down(
    directory: LabDirOption = Path(".lab"),
    purge: Annotated[bool, typer.Option("--purge", help="Also delete the servers' data.")] = False,
) -> None:
    """Stop the lab's servers (with --purge, delete them too)."""
    lab.Lab(directory).down(purge=purge)
    out.print("lab purged" if purge else "lab stopped (data kept; --purge deletes it)")


@lab_app.command("restart")
def lab_restart(
    server: Annotated[str, typer.Argument(help="source or target")],
    directory: LabDirOption = Path(".lab"),
) -> None:
    """Restart one of the lab's servers (what a plan's source.restart runs in the lab)."""
    if server not in lab.SERVERS:
        raise UsageError(f"no lab server called {server!r}", hint="use source or target")
    lab.Lab(directory).restart(server)
    out.print(f"{server} restarted")


@lab_app.command("status")
def lab_status(directory: LabDirOption = Path(".lab")) -> None:
    """Whether the lab's servers run, and on which ports."""
    the_lab = lab.Lab(directory)
    state = the_lab.state()
    if state is None:
        out.print(f"no lab in {the_lab.root}: start one with `cutover lab up`")
        raise typer.Exit(1)
    running = the_lab.running()
    for instance in state.instances:
        word = "[green]running[/]" if running[instance.name] else "[red]stopped[/]"
        out.print(f"{instance.name:>6}: {word} on 127.0.0.1:{instance.port} ({instance.datadir})")
    _print_pool(the_lab)


def _print_pool(the_lab: lab.Lab) -> None:
    """The lab's PgBouncer, if it has one: where its entry points, and whether it is paused."""
    bouncer = the_lab.bouncer()
    if bouncer is None:
        return
    pool = the_lab.pool()
    if pool is None:
        out.print(f"pgbouncer: [red]stopped[/] (127.0.0.1:{bouncer.port})")
        return
    paused = ", [yellow]paused[/]" if pool.paused else ""
    out.print(
        f"pgbouncer: [green]running[/] on 127.0.0.1:{bouncer.port}, "
        f"{pool.name} -> {pool.host}:{pool.port}{paused}"
    )


@lab_app.command("load")
def lab_load(
    directory: LabDirOption = Path(".lab"),
    duration: Annotated[
        float | None, typer.Option(help="Seconds to run (default: until Ctrl-C or SIGTERM).")
    ] = None,
    workers: Annotated[int, typer.Option(min=1, help="Concurrent writers.")] = 4,
    rate: Annotated[float, typer.Option(min=1, help="Writes per second, all together.")] = 300,
) -> None:
    """Write to the lab's app database without pause: the application stand-in.

    It follows DATABASE_URL (the tables' owner) and WRITER_URL (a role with grants)
    in the lab's app.env (so a switch repoints them),
    pauses and resumes over HTTP (the plan's writer tier), and logs every write
    to writes.jsonl for `cutover lab audit`.
    """
    the_lab = lab.Lab(directory)
    settings = the_lab.load_settings()
    if settings is None:
        raise UsageError(
            f"the lab in {the_lab.root} has no write load",
            hint="start the lab with its sample: `cutover lab up`",
        )
    with the_lab.write_log.open("a") as handle:
        work = load.Load(
            env_file=the_lab.app_env,
            keys=lab.APP_KEYS,
            tables=settings["tables"],
            log=load.WriteLog(handle),
            workers=workers,
            rate=rate,
        )
        signal.signal(signal.SIGTERM, lambda *_: work.stop.set())
        err.print(f"writing; control on http://127.0.0.1:{settings['port']} (Ctrl-C stops)")
        try:
            work.run(port=settings["port"], duration=duration)
        except KeyboardInterrupt:
            work.stop.set()
    out.print(f"{work.log.acked} writes acknowledged")


@lab_app.command("audit")
def lab_audit(directory: LabDirOption = Path(".lab")) -> None:
    """Check every acknowledged write of the load against the target, after a switch.

    Exit code 0: nothing lost, the source took no write after the fence, and the
    application saw no error but the ones the fence causes during the switch.
    """
    audited = lab.Lab(directory).audit()
    result = audited.result
    out.print(f"rows on the target (load tables): {audited.rows_on_target}")
    out.print(f"write pause: {audited.write_pause}")
    out.print(f"acknowledged writes: {result.acknowledged}")
    out.print(f"acknowledged writes missing on the target: {len(result.missing)}")
    out.print(f"writes the source took after the fence: {result.after_fence}")
    out.print(
        f"errors the application saw from the fence, during the switch: {result.fenced_errors}"
    )
    out.print(f"other errors the application saw: {len(result.errors)}")
    for problem in [*result.missing[:20], *result.errors[:20]]:
        out.print(f"  {_escape(problem)}")
    raise typer.Exit(1 if result.missing or result.after_fence or result.errors else 0)


# -- entry point ------------------------------------------------------------------------------


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main() -> NoReturn:
    """Run the command line; user errors exit with one clear line and a hint."""
    try:
        _run()
    except SystemExit as exit_:
        code = exit_.code
    else:
        code = 0
    if isinstance(code, str):
        err.print(code, markup=False)
    _exit(1 if isinstance(code, str) else code or 0)


def _exit(code: int) -> NoReturn:
    """End the process without tearing the interpreter down.

    Freeing every module and object one by one takes 0.25 s here, after the work is done
    and said: a quarter of a small command's time, paid by every command a script or a
    Job runs. What an ordinary exit does that matters is done first: the threads that
    are not daemons end, the atexit functions run (logging's flush, the Cloud SQL
    connector's close), the output is flushed.
    """
    for thread in threading.enumerate():
        if thread is not threading.main_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _run() -> None:
    # A SIGTERM (a pod being evicted, a supervisor stopping us) is handled like Ctrl-C:
    # the step in flight is recorded and, in a switch, rolled back.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        app()  # typer handles its own usage errors (exit 2) and exits
    except KeyboardInterrupt:
        err.print("[bold red]INTERRUPTED[/]")
        sys.exit(130)
    except CutoverError as exc:
        _fail(exc)
    except Exception as exc:
        # A database error outside a command's steps (the lab's) is the operator's, not a bug.
        translated = api.translate(exc)
        if translated is None:
            raise  # a bug: keep its traceback
        _fail(translated)


def _fail(exc: CutoverError) -> NoReturn:
    """One line and a hint; the traceback of what caused it only with --verbose."""
    if exc.__cause__ is not None and log.is_verbose():
        trace = "".join(traceback.format_exception(exc))
        err.print(api.mask(trace), markup=False, soft_wrap=True, end="")
    style = "bold yellow" if exc.label in ("WARNING", "PLANNED") else "bold red"
    err.print(f"[{style}]{exc.label}:[/] {_escape(api.mask(exc.message))}", soft_wrap=True)
    if exc.hint:
        err.print(f"[dim]hint:[/] {_escape(api.mask(exc.hint))}", soft_wrap=True)
    sys.exit(exc.exit_code)
