"""The command line: parsing, printing, prompts and exit codes. The only place that prints.

Every command catches `CutoverError` in one spot (`main`), prints `FAILED:` and
`hint:` and exits with the error's code: 0 success, 1 a failure or blockers,
2 a usage, plan or connection error. Any other exception is a bug and keeps
its traceback.
"""

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from cutover import __version__, lab, log, preflight, runner
from cutover.errors import CutoverError
from cutover.ledger import Journal
from cutover.pg.connect import pool
from cutover.phases import prepare
from cutover.plan import Plan, load
from cutover.steps import Outcome, StepStatus

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
    plan = load(plan_path)
    with pool({"source": plan.source, "target": plan.target}) as connections:
        report = preflight.run(plan, connections)
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


# -- prepare ----------------------------------------------------------------------------------


@app.command("prepare")
def prepare_command(plan_path: PlanOption, dry_run: DryRunOption = False) -> None:
    """Make both sides ready: the target database and the barrier tables.

    Safe to run again: what is already done is skipped, what was done but not
    recorded is adopted. With --dry-run, prints the SQL and changes nothing.
    """
    plan = load(plan_path)
    with pool({"source": plan.source, "target": plan.target}) as connections:
        if dry_run:
            _run_phases(plan, runner.journal_for(plan), connections, dry_run=True)
        else:
            with runner.locked(plan) as journal:
                _run_phases(plan, journal, connections, dry_run=False)


def _run_phases(plan: Plan, journal: Journal, connections: Any, *, dry_run: bool) -> None:
    def show(report: runner.StepReport) -> None:
        style = OUTCOME_STYLE[report.outcome]
        out.print(
            f"[{style}]{report.outcome.value:>8}[/] {report.key} "
            f"[dim]{report.seconds * 1000:.0f} ms[/]"
        )
        for change in report.changes:
            action = change.action.replace("\n", "\n" + " " * 11)
            out.print(f"           [dim]{change.target}:[/] {_escape(action)}", soft_wrap=True)

    steps = runner.Runner(journal, move=plan.move, dry_run=dry_run, on_step=show)
    for db in plan.databases:
        steps.run(prepare.phase(connections, db), scope=db)
    if dry_run:
        out.print("[yellow]dry run: nothing was changed[/]")


# -- status -----------------------------------------------------------------------------------


@app.command()
def status(plan_path: PlanOption, as_json: JsonOption = False) -> None:
    """The move's record: each step's state, and the latest events of the audit trail."""
    plan = load(plan_path)
    journal = runner.journal_for(plan)
    records = sorted(journal.steps().values(), key=lambda r: r.started_at)
    interrupted = [r.key for r in journal.running()]
    if as_json:
        out.print_json(
            json.dumps(
                {
                    "move": plan.move,
                    "ledger": journal.where,
                    "interrupted": interrupted,
                    "steps": [
                        {
                            "key": r.key,
                            "status": r.status.value,
                            "outcome": r.outcome.value if r.outcome else None,
                            "started_at": r.started_at,
                            "ended_at": r.ended_at,
                            "seconds": r.seconds,
                            "runs": r.runs,
                            "error": r.error,
                        }
                        for r in records
                    ],
                }
            )
        )
        return
    if not records:
        out.print(f"move '{plan.move}': nothing has run yet (ledger: {journal.where})")
        return
    table = Table(title=f"move '{plan.move}'", caption=f"ledger: {journal.where}")
    for column in ("step", "state", "started", "took", "runs", "error"):
        table.add_column(column)
    for r in records:
        style = (
            "red"
            if r.status is StepStatus.FAILED
            else "yellow"
            if r.status is StepStatus.RUNNING
            else ""
        )
        table.add_row(
            r.key,
            f"[{style}]{r.status.value}[/]" if style else r.status.value,
            r.started_at.replace("T", " ")[:19],
            f"{r.seconds * 1000:.0f} ms" if r.seconds is not None else "",
            str(r.runs),
            _escape(r.error or ""),
        )
    out.print(table)
    if interrupted:
        out.print(
            "[bold red]INTERRUPTED:[/] a run stopped during "
            + ", ".join(interrupted)
            + ": run the same command again to resume"
        )


# -- lab --------------------------------------------------------------------------------------


@lab_app.command("up")
def lab_up(
    directory: LabDirOption = Path(".lab"),
    sample: Annotated[
        bool, typer.Option("--sample/--no-sample", help="Load the sample database 'app'.")
    ] = True,
) -> None:
    """Start two local PostgreSQL 15 servers (source, target) and write a ready plan."""
    the_lab = lab.Lab(directory)
    with err.status("starting the lab servers..."):
        state = the_lab.up(sample=sample)
    for instance in state.instances:
        out.print(
            f"{instance.name:>6}: postgresql://postgres@127.0.0.1:{instance.port}/postgres "
            f"[dim](password in {the_lab.password_file})[/]"
        )
    if state.pglogical:
        out.print("pglogical: preloaded")
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


# -- entry point ------------------------------------------------------------------------------


def main() -> None:
    """Run the command line; user errors exit with one clear line and a hint."""
    try:
        app()  # typer handles its own usage errors (exit 2) and exits
    except CutoverError as exc:
        err.print(f"[bold red]FAILED:[/] {_escape(log.redact(exc.message))}")
        if exc.hint:
            err.print(f"[dim]hint:[/] {_escape(log.redact(exc.hint))}")
        sys.exit(exc.exit_code)
