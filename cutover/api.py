"""The commands' work, one function a command, for the command line and for any program.

Each takes the plan and the command's options, reports as it goes through
callbacks (a step's outcome, bytes copied, rows numbered), and returns a
typed result; a failure raises a `CutoverError`, a database error outside
a step included (translated as pg/errors.py says). Nothing here prints,
prompts or exits: cli.py does that over these functions, as Alembic's
command line does over its `command` module.
"""

import functools
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from cutover import database, observe, preflight, runner, state
from cutover import verify as comparing
from cutover.database import FillProgress, Pool, mask, pool, translate
from cutover.engines import engine_for, prove_applied, reversed_plan
from cutover.errors import (
    CannotCompare,
    CutoverError,
    PreconditionFailed,
    StepFailed,
    UsageError,
)
from cutover.ledger import Pause, journal_for, move_id, save_verification, writer_records
from cutover.phases import backfill as backfilling
from cutover.phases import backups as backing_up
from cutover.phases import cleanup as cleaning
from cutover.phases import prepare as preparing
from cutover.phases import rollback as rolling_back
from cutover.phases import start as starting
from cutover.phases import switch as switching
from cutover.phases import sync_schema as syncing
from cutover.phases import terraform as terraforming
from cutover.plan import Plan, Server
from cutover.runner import StepReport
from cutover.steps import SWITCH_SCOPE, Phase, StepStatus, SwitchStep
from cutover.types import Side, SyncProgress, TableName

if TYPE_CHECKING:  # the Prometheus client loads only where metrics are served
    from cutover.metrics import exporter

__all__ = [
    "Backfilled",
    "Background",
    "FillProgress",
    "OnFill",
    "OnReady",
    "OnStep",
    "Ran",
    "Readiness",
    "Switched",
    "backfill",
    "check",
    "cleanup",
    "mask",
    "prepare",
    "rollback",
    "scrape",
    "serve_metrics",
    "start",
    "start_in_background",
    "status",
    "switch",
    "translate",
    "verify",
]

P = ParamSpec("P")
R = TypeVar("R")
OnStep = Callable[[StepReport], None]
Readiness = switching.Readiness
OnReady = Callable[[Readiness], None]  # the wait for a quiet lag before the switch
OnFill = Callable[[str, str, FillProgress], None]  # database, table as SQL spells it, progress
BACKGROUND_GRACE_SECONDS = 1.0  # a background start that fails this fast is reported at once


def _ignore(*_: object) -> None:
    """A callback nobody asked for."""


@dataclass(frozen=True)
class Ran:
    """What a command's phases did: each step's report, in the order they ran."""

    reports: tuple[StepReport, ...]
    dry_run: bool


@dataclass(frozen=True)
class Backfilled(Ran):
    """The backfill's steps, and the tables it numbered (none: every table has a key)."""

    tables: tuple[TableName, ...] = ()


@dataclass(frozen=True)
class Switched(Ran):
    """The switch's (or rollback's) steps, and the write pause it measured."""

    pause: Pause | None = None


@dataclass(frozen=True)
class Background:
    """A start that runs on in a process of its own."""

    pid: int
    log: Path
    exit_code: int | None  # None: still running after the grace period
    tail: str = ""  # the log's last lines, when it ended within the grace period


def _command(work: Callable[P, R]) -> Callable[P, R]:
    """A command: a database error that escapes its steps is raised as the CutoverError it is."""

    @functools.wraps(work)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return work(*args, **kwargs)
        except CutoverError:
            raise
        except Exception as exc:
            translated = translate(exc)
            if translated is None:
                raise  # a bug: keep its traceback
            raise translated from exc

    return run


def _servers(plan: Plan) -> dict[str, Server]:
    return {Side.SOURCE: plan.source, Side.TARGET: plan.target}


@contextmanager
def _both_ways(plan: Plan) -> Iterator[tuple[Pool, Pool]]:
    """Connections as the plan says, and with the sides swapped (fallback, rollback)."""
    with pool(_servers(plan)) as forward, pool(_servers(reversed_plan(plan))) as backward:
        yield forward, backward


def _run(
    plan: Plan, work: Callable[[runner.Runner], object], *, dry_run: bool, on_step: OnStep
) -> tuple[StepReport, ...]:
    """`work` with a runner on the move's journal, locked unless nothing is to change."""
    reports: list[StepReport] = []

    def report(step: StepReport) -> None:
        reports.append(step)
        on_step(step)

    if dry_run:
        work(runner.Runner(journal_for(plan), move=plan.move, dry_run=True, on_step=report))
    else:
        with runner.locked(plan) as journal:
            work(runner.Runner(journal, move=plan.move, dry_run=False, on_step=report))
    return tuple(reports)


def _run_phases(
    plan: Plan,
    connections: Pool,
    phases_for: Callable[[str], list[Phase]],
    *,
    dry_run: bool,
    on_step: OnStep,
    move_wide: tuple[Phase, ...] = (),
) -> tuple[StepReport, ...]:
    """The `move_wide` phases first, then the phases of each database, in the plan's order;
    each built when its turn comes. Only the database at hand holds sessions: a move of
    hundreds of databases leaves the application's connection slots to the application."""

    def run_all(steps: runner.Runner) -> None:
        for phase in move_wide:
            steps.run(phase, scope=SWITCH_SCOPE)
        for db in plan.databases:
            try:
                for phase in phases_for(db):
                    steps.run(phase, scope=db)
            finally:
                connections.release(db)

    return _run(plan, run_all, dry_run=dry_run, on_step=on_step)


def _run_pausing(plan: Plan, phase: Phase, *, dry_run: bool, on_step: OnStep) -> Switched:
    """A phase that stops the writers (switch, rollback), for the whole move; then its pause."""
    reports = _run(
        plan,
        lambda steps: steps.run(phase, scope=SWITCH_SCOPE),
        dry_run=dry_run,
        on_step=on_step,
    )
    if dry_run:
        return Switched(reports, dry_run)
    with runner.locked(plan) as journal:
        pause = runner.record_pause(journal, phase=phase.name, scope=SWITCH_SCOPE)
    return Switched(reports, dry_run, pause=pause)


# -- check ------------------------------------------------------------------------------------


@_command
def check(plan: Plan) -> preflight.Report:
    """Every preflight check, read-only."""
    journal = journal_for(plan)
    copied = {
        db
        for db in plan.databases
        if (record := journal.get(f"{db}/start.{starting.COPY_DATA}")) is not None
        and record.status in (StepStatus.DONE, StepStatus.RUNNING)
    }
    with pool(_servers(plan)) as connections:
        report = preflight.run(plan, connections, copied=copied, move_id=move_id(plan))
    return preflight.Report(report.findings + tuple(_application_findings(plan)))


def _application_findings(plan: Plan) -> Iterator[preflight.Finding]:
    """The plan's writers and repoints, each asked (reading only) what would stop it."""
    from cutover import repoint, writers

    records = writer_records(plan)
    asked: list[tuple[str, str, list[str]]] = []
    for writer_spec in (w for tier in plan.tiers() for w in tier):
        writer = writers.writer_for(writer_spec, records=records)
        if isinstance(writer, writers.Checked):
            asked.append(("writer", writer.name, writer.problems()))
    for repoint_spec in plan.repoint:
        place = repoint.repoint_for(repoint_spec, plan.databases)
        if isinstance(place, repoint.Checked):
            asked.append(("repoint", place.name, place.problems(plan.target)))
    for kind, name, problems in asked:
        scope = f"{kind}/{name}"
        if not problems:
            yield preflight.Finding(
                kind, scope, preflight.Status.OK, "reachable; what it reads is there"
            )
        for problem in problems:
            yield preflight.Finding(
                kind,
                scope,
                preflight.Status.FAIL,
                problem.removeprefix(f"{kind} {name}: "),
                f"the switch would stop at this {kind}: fix the plan's {kind} entry, or what "
                "cutover may reach and read there",
            )


# -- prepare and backfill ---------------------------------------------------------------------


def _backfill_phases(
    plan: Plan, connections: Pool, db: str, tables: list[TableName], on_fill: OnFill
) -> list[Phase]:
    """A phase per table to number; its progress also sets the backfill's gauges."""

    def reporter(table: TableName) -> Callable[[FillProgress], None]:
        name = str(table)

        def report(progress: FillProgress) -> None:
            from cutover.metrics import exporter

            exporter.backfill_progress(
                plan.move,
                db,
                name,
                rows_done=progress.rows,
                rows_total=progress.rows_total,
                pages_done=progress.pages_done,
                pages_total=progress.pages_total,
            )
            on_fill(db, name, progress)

        return report

    return [
        backfilling.phase(plan, connections, db, table, on_progress=reporter(table))
        for table in tables
    ]


@_command
def prepare(
    plan: Plan,
    *,
    restart: bool,
    dry_run: bool,
    approved: bool = False,
    on_step: OnStep = _ignore,
    on_fill: OnFill = _ignore,
) -> Ran:
    """Keys for tables without one, then both sides made ready, database by database.

    With a terraform section the source's flags go through Terraform first; its
    plan is applied only when `approved` (--yes), else shown and ApprovalNeeded.
    """
    with pool(_servers(plan)) as connections:
        database.refuse_other_moves(plan, connections)
        engine = engine_for(plan, connections)
        module = terraforming.module_for(plan, engine)
        flags = (terraforming.prepare_phase(module, approved=approved),) if module else ()
        # Cloud SQL's source is backed up first: before its flags, its restart, a key added.
        backups = backing_up.backups_for(plan)
        backup = (backing_up.prepare_phase(backups),) if backups else ()

        def phases_for(db: str) -> list[Phase]:
            tables = database.tables_without_key(plan, connections, db)
            return [
                *_backfill_phases(plan, connections, db, tables, on_fill),
                preparing.phase(plan, connections, db, engine, restart=restart),
            ]

        reports = _run_phases(
            plan,
            connections,
            phases_for,
            dry_run=dry_run,
            on_step=on_step,
            move_wide=(*backup, *flags),
        )
    return Ran(reports, dry_run)


@_command
def backfill(
    plan: Plan,
    *,
    tables: list[TableName] | None,
    dry_run: bool,
    on_step: OnStep = _ignore,
    on_fill: OnFill = _ignore,
) -> Backfilled:
    """A primary key for `tables` (default: the plan's, or every table without a key)."""
    if tables:
        plan = plan.model_copy(
            update={"backfill": plan.backfill.model_copy(update={"tables": tables})}
        )
    chosen: list[TableName] = []
    with pool(_servers(plan)) as connections:

        def phases_for(db: str) -> list[Phase]:
            found = database.tables_without_key(plan, connections, db)
            chosen.extend(found)
            return _backfill_phases(plan, connections, db, found, on_fill)

        reports = _run_phases(plan, connections, phases_for, dry_run=dry_run, on_step=on_step)
    return Backfilled(reports, dry_run, tables=tuple(chosen))


# -- start ------------------------------------------------------------------------------------


@_command
def start(
    plan: Plan,
    *,
    jobs: int,
    dry_run: bool,
    recopy: bool = False,
    on_step: OnStep = _ignore,
    on_copy: Callable[[str, SyncProgress], None] = _ignore,
    on_lag: Callable[[str, int], None] = _ignore,
) -> Ran:
    """Copy, index and stream each database, here and now, until the target caught up.

    With `recopy`, each database's subscription and slot are dropped and the
    target's tables emptied first: copied anew (refused once the switch promoted).
    """
    if recopy:
        _refuse_recopy_after_promote(plan)
    with pool(_servers(plan)) as connections:
        database.refuse_other_moves(plan, connections)
        engine = engine_for(plan, connections)

        def phases_for(db: str) -> list[Phase]:
            recopying = [starting.recopy_phase(plan, connections, db, engine)] if recopy else []
            return [
                *recopying,
                starting.phase(
                    plan,
                    connections,
                    db,
                    engine,
                    jobs=jobs,
                    on_progress=functools.partial(on_copy, db),
                    on_lag=functools.partial(on_lag, db),
                ),
            ]

        reports = _run_phases(plan, connections, phases_for, dry_run=dry_run, on_step=on_step)
    return Ran(reports, dry_run)


def _refuse_recopy_after_promote(plan: Plan) -> None:
    """The target took writes once the switch promoted it: emptying it would lose them."""
    promoted = journal_for(plan).get(f"{SWITCH_SCOPE}/switch.{SwitchStep.PROMOTE}")
    if promoted is not None and promoted.status is StepStatus.DONE:
        raise PreconditionFailed(
            "the switch promoted the target: it holds the application's writes since, "
            "which a copy anew would delete",
            hint="the move is done; `cutover rollback` goes back if a fallback runs",
        )


@_command
def sync_schema(plan: Plan, *, dry_run: bool, on_step: OnStep = _ignore) -> Ran:
    """Make the target's moved tables like the source's and carry new ones, database by database."""
    with pool(_servers(plan)) as connections:
        database.refuse_other_moves(plan, connections)
        engine = engine_for(plan, connections)

        def phases_for(db: str) -> list[Phase]:
            starting.require_prepared(connections, db, engine)
            return [syncing.phase(plan, connections, db, engine)]

        reports = _run_phases(plan, connections, phases_for, dry_run=dry_run, on_step=on_step)
    return Ran(reports, dry_run)


@_command
def start_in_background(
    plan: Plan, plan_path: Path, *, jobs: int, metrics_port: int | None, recopy: bool = False
) -> Background:
    """Check what start needs, then run `start --wait` detached, its output in a log file."""
    with pool(_servers(plan)) as connections:
        database.refuse_other_moves(plan, connections)
        engine = engine_for(plan, connections)
        for db in plan.databases:
            starting.require_prepared(connections, db, engine)
    plan.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = plan.state_dir / f"{plan.move}.start.log"
    if recopy:
        _refuse_recopy_after_promote(plan)
    argv = [sys.executable, "-m", "cutover", "start", "-p", str(plan_path.resolve())]
    if recopy:
        argv += ["--recopy", "--yes"]
    if metrics_port is not None:
        argv += ["--metrics-port", str(metrics_port)]
    with log_path.open("ab") as log_file:
        child = subprocess.Popen(
            [*argv, "--wait", "--parallel", str(jobs)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in this terminal does not reach it
        )
    try:
        code = child.wait(timeout=BACKGROUND_GRACE_SECONDS)
    except subprocess.TimeoutExpired:
        return Background(child.pid, log_path, None)
    tail = log_path.read_text(errors="replace").splitlines()[-20:]
    return Background(child.pid, log_path, code, "\n".join(tail))


# -- switch, rollback, cleanup ----------------------------------------------------------------


@_command
def switch(
    plan: Plan,
    *,
    keep_fallback: bool,
    dry_run: bool,
    on_step: OnStep = _ignore,
    on_ready: OnReady = _ignore,
) -> Switched:
    """Move the writes to the target; with `keep_fallback`, replicate back for a rollback.

    `on_ready` hears how the wait for a quiet lag stands, about twice a second.
    """
    back = reversed_plan(plan)
    with _both_ways(plan) as (connections, back_connections):
        database.refuse_other_moves(plan, connections)
        fallback = engine_for(back, back_connections) if keep_fallback else None
        engine = engine_for(plan, connections)
        phase = switching.phase(plan, connections, engine, fallback=fallback, on_ready=on_ready)
        return _run_pausing(plan, phase, dry_run=dry_run, on_step=on_step)


@_command
def abandon_switch(plan: Plan, *, dry_run: bool, on_step: OnStep = _ignore) -> Ran:
    """Give up a switch interrupted before its promotion: each step it did undone in reverse.

    The fence is lifted and the writers start again on the source, which still
    replicates to the target; a later switch starts from its first step.
    """
    with pool(_servers(plan)) as connections:
        database.refuse_other_moves(plan, connections)
        phase = switching.phase(plan, connections, engine_for(plan, connections))
        reports = _run(
            plan,
            lambda steps: steps.abandon(phase, SWITCH_SCOPE),
            dry_run=dry_run,
            on_step=on_step,
        )
    return Ran(reports, dry_run)


@_command
def rollback(
    plan: Plan, *, dry_run: bool, on_step: OnStep = _ignore, on_ready: OnReady = _ignore
) -> Switched:
    """Move the writes back to the source, after a switch that kept the fallback."""
    back = reversed_plan(plan)
    with _both_ways(plan) as (connections, back_connections):
        database.refuse_other_moves(plan, connections)
        back_engine = engine_for(back, back_connections)
        phase = rolling_back.phase(
            plan, connections, back_connections, back_engine, on_ready=on_ready
        )
        return _run_pausing(plan, phase, dry_run=dry_run, on_step=on_step)


@_command
def cleanup(
    plan: Plan, *, dry_run: bool, retire_source: bool = False, on_step: OnStep = _ignore
) -> Ran:
    """Remove the move's objects from both servers, the fallback's first.

    With `retire_source`, then the old instance through Terraform: a final backup,
    its deletion protection lifted, its resource alone destroyed.
    """
    if retire_source:
        _require_retirable(plan)
    back = reversed_plan(plan)
    with _both_ways(plan) as (connections, back_connections):
        database.refuse_other_moves(plan, connections)
        engine = engine_for(plan, connections)
        back_engine = engine_for(back, back_connections)
        module = terraforming.module_for(plan, engine) if retire_source else None

        def both_ways(steps: runner.Runner) -> None:
            for db in plan.databases:
                fallback = f"{db}/fallback"
                check, forward = cleaning.split(
                    cleaning.phase(plan, connections, db, engine), cleaning.CHECK
                )
                guard, forward = cleaning.split(forward, cleaning.DROP_DDL_GUARD)
                back_check, back = cleaning.split(
                    cleaning.fallback_phase(plan, back_connections, db, back_engine),
                    cleaning.CHECK,
                )
                # A half-done switch (or rollback) is refused before anything is removed.
                steps.run(check, scope=db)
                steps.run(back_check, scope=fallback)
                # The DDL guard on the source next, by name: no later statement is refused.
                steps.run(guard, scope=db)
                # The fallback replication (target to source) a switch may have started:
                # before the forward one, since it uses what the forward replication installed.
                steps.run(back, scope=fallback)
                steps.run(forward, scope=db)
                connections.release(db)  # a database done holds no session
                back_connections.release(db)
            steps.run(cleaning.previous_values_phase(plan), scope=SWITCH_SCOPE)
            if module is not None:  # last: the source keeps its objects until it goes
                steps.run(terraforming.retire_phase(module), scope=SWITCH_SCOPE)

        reports = _run(plan, both_ways, dry_run=dry_run, on_step=on_step)
    return Ran(reports, dry_run)


def _require_retirable(plan: Plan) -> None:
    """The source may be destroyed only through Terraform, and only once the switch promoted."""
    if plan.terraform is None:
        raise UsageError(
            "--retire-source destroys the source through Terraform, and the plan has no "
            "terraform section",
            hint="add terraform: directory and source_address to the plan "
            "(docs/terraform.md), or remove the old instance yourself",
        )
    promoted = journal_for(plan).get(f"{SWITCH_SCOPE}/switch.{SwitchStep.PROMOTE}")
    if promoted is None or promoted.status is not StepStatus.DONE:
        raise PreconditionFailed(
            "the switch has not promoted the target: the source is still the primary, "
            "and nothing was changed",
            hint="switch first (`cutover switch`); --retire-source is for a finished move",
        )


# -- status and metrics -----------------------------------------------------------------------


@_command
def status(plan: Plan) -> state.MoveState:
    """Where the move stands: the ledger, and each database's replication, read now."""
    journal = journal_for(plan)  # status needs the ledger: one it cannot read fails the command
    with pool(_servers(plan)) as connections:
        return state.read(plan, connections, journal)


def scrape(plan: Plan) -> str:
    """One scrape of the move's metrics in Prometheus' text format, as /metrics serves it."""
    from cutover.metrics import exporter

    return exporter.exposition(_collector(plan))


def serve_metrics(plan: Plan, port: int | None, address: str = "0.0.0.0") -> None:
    """The move's metrics on `port` while this process runs, if a port is given.

    Every scrape reads the servers and the ledger anew.
    """
    if port is not None:
        from cutover.metrics import exporter

        exporter.serve(port, address, collector=_collector(plan))


def _collector(plan: Plan) -> "exporter.MoveCollector":
    from cutover.metrics import exporter

    return exporter.MoveCollector(plan.move, observe.Observer(plan).snapshot)


# -- verify -----------------------------------------------------------------------------------


@_command
def verify(
    plan: Plan,
    *,
    mode: comparing.Mode,
    tables: list[TableName] | None,
    jobs: int,
    max_keys: int,
    on_table: Callable[[comparing.TableResult], None] = _ignore,
) -> comparing.Report:
    """Compare source and target, each database at a consistent point.

    A verification of every table is kept for the exporter (the differences per database).
    """
    report = comparing.Report(mode)
    began = time.monotonic()
    with pool(_servers(plan)) as connections:
        for db in plan.databases:
            comparing.verify_database(
                plan.source,
                plan.target,
                db,
                mode=mode,
                tables=tables,
                settle=_consistent_point(plan, connections, db),
                jobs=jobs,
                max_keys=max_keys,
                report=report,
                on_table=on_table,
            )
    report.seconds = time.monotonic() - began
    if tables is None:
        save_verification(plan, mode=mode.value, mismatches=report.mismatches())
    return report


def _consistent_point(plan: Plan, connections: Pool, db: str) -> comparing.Settle:
    """How verify waits until the target holds what the source committed.

    While the move replicates: a barrier row written on the source after its
    snapshot, applied on the target before the target's snapshot. Without a
    subscription (before start, after the switch) both sides are read as they are.
    """
    engine = engine_for(plan, connections)
    if not engine.initial_sync_started(db):
        return lambda: comparing.NOTHING_RUNS
    timeout = max(30.0, plan.thresholds.switch_timeout)

    def settle() -> str:
        try:
            markers = prove_applied(
                engine,
                [db],
                timeout=timeout,
                hint="replication is slow or stopped (`cutover status`); verify once it "
                "streams again, or after the switch",
            )
        except StepFailed as exc:
            raise CannotCompare(
                f"{exc.message}, so no point exists where both sides can be compared",
                hint=exc.hint,
            ) from None
        return f"barrier at {markers[db].position} applied by the target"

    return settle
