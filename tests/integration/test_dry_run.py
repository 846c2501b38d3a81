"""A dry run prints exactly what a run executes: each SQL line of `--dry-run` is in the server log.

Each test runs a command with `--dry-run`, then for real, with the servers
logging every statement of the plan's users (`statement_log`, in conftest.py),
and finds each SQL line the dry run printed, verbatim up to whitespace, among
the statements the run sent to that line's server. A line is SQL when it
begins with an SQL command word (`SQL_COMMANDS`); the others (`pg_dump ...`,
`pg_restore ...`, a restart command, `wait until ...`) describe what is not a
statement and are skipped. A dry run cannot know values a run learns as it
goes: such a line shows them as placeholders (`%(next)s`), and a secret as
`********`; each stands for one value in the executed statement. Only steps
the run applied count: a step it skipped or adopted executed nothing.
"""

import re
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cutover.lab import Lab
from cutover.log import MASK
from cutover.pg import backfill
from cutover.pg.backfill import Key
from cutover.pg.connect import connect as cutover_connect
from cutover.steps import Change
from cutover.types import TableName
from tests.conftest import Databases, Result, connect
from tests.integration.conftest import Recording, StatementLog

pytestmark = pytest.mark.integration

SQL_WORDS = (
    "ALTER ANALYZE CALL CLUSTER COMMENT COPY CREATE DELETE DO DROP GRANT INSERT LOCK REASSIGN "
    "REFRESH REINDEX RESET REVOKE SECURITY SELECT SET TRUNCATE UPDATE VACUUM WITH"
)
SQL_COMMANDS = frozenset(SQL_WORDS.split())  # the first word of a line that is SQL
INDENT = " " * 11  # cli.py prints each change under its step, this far in
STEP = re.compile(r"^\s*(?P<outcome>[a-z]+) (?P<key>.+) \d+ ms$")
CHANGE = re.compile(rf"^{INDENT}(?P<where>(?:source|target)(?:/[^:]*)?): (?P<action>.*)$")
PLACEHOLDER = re.compile(r"%\([a-z_]+\)s|" + re.escape(MASK))
# One SQL literal or word where a placeholder was; inside a literal, a run of its characters
# (a password is sent as its SCRAM hash).
VALUE = r"(?:'(?:[^']|'')*'|[^\s'(),]+)"


@dataclass
class Printed:
    """One step as a command printed it: outcome, ledger key, and its changes."""

    outcome: str
    key: str
    changes: list[Change] = field(default_factory=list)


def printed_steps(stdout: str) -> list[Printed]:
    """The steps and their changes, read back from a command's output (see cli._show)."""
    steps: list[Printed] = []
    for line in stdout.splitlines():
        if (change := CHANGE.match(line)) and steps:
            steps[-1].changes.append(Change(change["where"], change["action"]))
        elif line.startswith(INDENT) and steps and steps[-1].changes:
            last = steps[-1].changes[-1]  # a statement of several lines goes on
            steps[-1].changes[-1] = Change(last.where, last.action + "\n" + line[len(INDENT) :])
        elif step := STEP.match(line):
            steps.append(Printed(step["outcome"], step["key"]))
    return steps


def is_sql(action: str) -> bool:
    """Whether a printed change is an SQL statement (rather than a command or a description)."""
    words = action.split(maxsplit=1)
    return bool(words) and words[0].upper() in SQL_COMMANDS


def normalise(text: str) -> str:
    return " ".join(text.split())


def pattern(line: str) -> re.Pattern[str]:
    """A printed SQL line as a pattern: whitespace normalised, each placeholder one value."""
    parts = PLACEHOLDER.split(normalise(line))
    return re.compile(VALUE.join(re.escape(p) for p in parts))


def executed(line: str, statements: Sequence[str]) -> bool:
    """Whether `line` is, verbatim up to whitespace and placeholders, one of the statements."""
    wanted = pattern(line)
    return any(wanted.fullmatch(normalise(s)) for s in statements)


def sql_lines(steps: list[Printed], *, keys: set[str] | None = None) -> list[Change]:
    """The SQL changes of the steps (of those with `keys` only, when given)."""
    return [
        c for s in steps if keys is None or s.key in keys for c in s.changes if is_sql(c.action)
    ]


def assert_runs_as_printed(dry: Result, real: Result, ran: Recording) -> list[Change]:
    """Each SQL line `dry` printed for a step `real` applied ran on its server; those lines."""
    assert dry.code == 0, dry.stdout + dry.stderr
    assert real.code == 0, real.stdout + real.stderr
    applied = {s.key for s in printed_steps(real.stdout) if s.outcome == "applied"}
    planned = printed_steps(dry.stdout)
    assert any(s.outcome == "planned" for s in planned), dry.stdout
    lines = sql_lines(planned, keys=applied)
    missing = [
        f"{c.where}: {c.action}"
        for c in lines
        if not executed(c.action, ran.statements[c.where.split("/")[0]])
    ]
    assert not missing, "printed by the dry run, never executed:\n" + "\n".join(missing)
    return lines


def assert_nothing_ran(dry: Result, ran: Recording) -> None:
    """The dry run itself executed none of the statements it printed."""
    for c in sql_lines(printed_steps(dry.stdout)):
        assert not executed(c.action, ran.statements[c.where.split("/")[0]]), c


def dry_then_real(
    cutover: Callable[..., Result], statement_log: StatementLog, *args: str
) -> list[Change]:
    """`cutover <args> --dry-run`, then `cutover <args>`: what the first printed, the second ran."""
    with statement_log.recording() as dry_run:
        dry = cutover(*args, "--dry-run")
    with statement_log.recording() as run:
        real = cutover(*args)
    assert_nothing_ran(dry, dry_run)
    return assert_runs_as_printed(dry, real, run)


SHOP = '''
CREATE SCHEMA "Sales Dept";
CREATE TABLE "Sales Dept"."Orders ""2026""" (id bigserial PRIMARY KEY, total numeric);
CREATE TABLE public.events (at timestamptz, kind text);
ALTER TABLE public.events REPLICA IDENTITY FULL;
INSERT INTO "Sales Dept"."Orders ""2026""" (total) SELECT g FROM generate_series(1, 100) g;
'''

KEYLESS = '"Log ""lines"""'


def keyless_table(lab: Lab, db: str, rows: int = 20_000) -> None:
    with connect(lab.server("source"), db) as conn:
        conn.execute(
            f"CREATE TABLE {KEYLESS} (v bigint, note text);"
            f"INSERT INTO {KEYLESS} SELECT g, 'n' || g FROM generate_series(1, {rows}) g"
        )


def test_prepare_runs_the_sql_its_dry_run_prints(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    statement_log: StatementLog,
) -> None:
    db = databases.create()
    with connect(lab.server("source"), db) as conn:
        conn.execute(SHOP)
    plan = str(write_plan([db], move=f"t{uuid.uuid4().hex[:8]}"))
    checked = dry_then_real(cutover, statement_log, "prepare", "-p", plan)
    # Every statement of prepare on a keyed database was checked (pg_dump and pg_restore are
    # commands).
    assert [c.action.split()[:2] for c in checked] == [
        ["CREATE", "DATABASE"],
        ["CREATE", "SCHEMA"],
        ["CREATE", "TABLE"],
        ["CREATE", "ROLE"],
        ["COMMENT", "ON"],  # the move's mark, the same in the dry run as in the run
        *[["GRANT", "USAGE"], ["GRANT", "SELECT"]] * 3,  # "Sales Dept", "_cutover", "public"
        ["CREATE", "ROLE"],  # the move's role on the target, before the schema's grants to it
        ["COMMENT", "ON"],
        ["CREATE", "SCHEMA"],  # the barrier on the target
        ["CREATE", "TABLE"],
        ["CREATE", "PUBLICATION"],
        ["COMMENT", "ON"],
    ]


def test_prepare_with_the_ddl_guard_runs_the_sql_its_dry_run_prints(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    statement_log: StatementLog,
) -> None:
    db = databases.create()
    with connect(lab.server("source"), db) as conn:
        conn.execute(SHOP)
    move = f"t{uuid.uuid4().hex[:8]}"
    plan = str(write_plan([db], move=move, ddl_guard=True))
    checked = dry_then_real(cutover, statement_log, "prepare", "-p", plan)
    # The guard's function (a statement of many lines) and its event triggers, as printed.
    guard = [c for c in checked if f"cutover_{move}_ddl_guard" in c.action]
    assert [" ".join(c.action.split()[:3]) for c in guard] == [
        "CREATE OR REPLACE",
        "CREATE EVENT TRIGGER",
        "CREATE EVENT TRIGGER",
    ]
    assert all(c.where == f"source/{db}" for c in guard)


def test_backfill_runs_the_sql_its_dry_run_prints(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    statement_log: StatementLog,
) -> None:
    db = databases.create()
    keyless_table(lab, db)
    plan = str(write_plan([db], move=f"t{uuid.uuid4().hex[:8]}"))
    assert len(dry_then_real(cutover, statement_log, "backfill", "-p", plan)) == 15


def test_each_backfill_step_runs_the_sql_its_dry_run_renders(
    lab: Lab, databases: Databases, statement_log: StatementLog
) -> None:
    """pg/backfill.py's steps, as a phase calls them: all dry first, then all for real."""
    db = databases.create()
    keyless_table(lab, db)
    key = Key(TableName("public", 'Log "lines"'), "cutover_id", "dry")
    conn = cutover_connect(lab.server("source"), db, label="source")

    def steps(*, dry_run: bool) -> list[Change]:
        index_state = backfill.state(conn, key).index
        timeout, where = 2.0, "source"
        return [
            *backfill.add_column(conn, key, lock_timeout=timeout, where=where, dry_run=dry_run),
            *backfill.number_rows(conn, key, lock_timeout=timeout, where=where, dry_run=dry_run),
            *backfill.set_not_null(conn, key, lock_timeout=timeout, where=where, dry_run=dry_run),
            *backfill.build_index(conn, key, index_state=index_state, where=where, dry_run=dry_run),
            *backfill.add_primary_key(
                conn, key, lock_timeout=timeout, where=where, dry_run=dry_run
            ),
        ]

    try:
        with statement_log.recording() as dry_run:
            planned = steps(dry_run=True)
        with statement_log.recording() as run:
            done = steps(dry_run=False)
        assert backfill.state(conn, key).primary_key
    finally:
        conn.close()
    printed = [c.action for c in planned]
    # Column, comment, sequence, its grant to the owner, default; the first batch; check,
    # validation, NOT NULL, the check dropped, default and sequence dropped, identity;
    # index; primary key.
    assert len(printed) == 15 and all(is_sql(line) for line in printed), printed
    assert not [line for line in printed if executed(line, dry_run.statements["source"])]
    missing = [line for line in printed if not executed(line, run.statements["source"])]
    assert not missing, missing
    # A run reports what it sent: the identity's first number filled in.
    sent = [c.action for c in done if is_sql(c.action)]
    assert all(executed(line, run.statements["source"]) for line in sent), sent
    assert printed[-3].endswith("START WITH %(next)s)"), printed[-3]
    assert sent[-3].endswith("START WITH 20001)"), sent[-3]


@pytest.mark.parametrize("engine", ["native", "pglogical"])
def test_start_switch_rollback_and_cleanup_run_the_sql_their_dry_runs_print(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    statement_log: StatementLog,
    engine: str,
) -> None:
    db = databases.create()
    with connect(lab.server("source"), db) as conn:
        conn.execute(SHOP)
        conn.execute(  # a key pglogical replicates by
            "ALTER TABLE public.events ADD COLUMN id bigserial PRIMARY KEY, "
            "REPLICA IDENTITY DEFAULT"
        )
    plan = str(write_plan([db], move=f"t{uuid.uuid4().hex[:8]}", engine=engine))
    prepared = cutover("prepare", "-p", plan)
    assert prepared.code == 0, prepared.stdout + prepared.stderr

    started = dry_then_real(cutover, statement_log, "start", "-p", plan, "--wait")
    assert any(c.action.startswith(("CREATE SUBSCRIPTION", "SELECT")) for c in started), started
    switched = dry_then_real(
        cutover, statement_log, "switch", "-p", plan, "--yes", "--keep-fallback"
    )
    verbs = {" ".join(c.action.split()[:2]) for c in switched}
    assert {"INSERT INTO", "ALTER ROLE"} <= verbs, verbs  # the barrier; the fence
    assert any("setval" in c.action for c in switched), switched  # the sequences
    rolled = dry_then_real(cutover, statement_log, "rollback", "-p", plan, "--yes")
    assert any(c.action.startswith("INSERT INTO") for c in rolled), rolled
    cleaned = dry_then_real(cutover, statement_log, "cleanup", "-p", plan, "--yes")
    assert any(c.action.startswith("DROP") for c in cleaned), cleaned
