"""Database errors as one line: messages parsed into GRANTs, secrets masked, classes mapped.

The errors here are built the way psycopg builds them from a server's report
(a SQLSTATE, a primary message, a detail); tests/integration/test_errors.py
provokes the real ones.
"""

import logging
from collections.abc import Iterator, Sequence
from pathlib import Path

import psycopg
import pytest
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql
from psycopg.pq import DiagnosticField

from cutover import log
from cutover.errors import ConnectionFailed, Retryable, StepFailed
from cutover.ledger import FileStore, Journal
from cutover.log import MASK
from cutover.pg.errors import Context, attach, condition, mask, translate
from cutover.pg.ident import quote
from cutover.runner import Runner
from cutover.steps import Change, Outcome, Phase, Step

ROLE = "ck role"

# Names PostgreSQL accepts: anything but NUL, at most 63 bytes.
names = st.text(
    alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
    min_size=1,
    max_size=20,
)


def server_error(
    sqlstate: str, primary: str, *, detail: str | None = None, statement: str | None = None
) -> psycopg.Error:
    """An error as psycopg raises it for a server's report, stamped as our connections do."""
    info: dict[int, bytes | None] = {
        DiagnosticField.SQLSTATE: sqlstate.encode(),
        DiagnosticField.MESSAGE_PRIMARY: primary.encode(),
        DiagnosticField.MESSAGE_DETAIL: detail.encode() if detail else None,
    }
    error = psycopg.errors.lookup(sqlstate)(primary, info=info)
    if statement is not None:
        attach(error, Context("source", "app db", ROLE, mask(statement)))
    return error


def hint_for(primary: str, statement: str) -> str:
    translated = translate(server_error("42501", primary, statement=statement))
    assert isinstance(translated, StepFailed)
    return translated.hint


@pytest.mark.parametrize(
    ("primary", "statement", "grant"),
    [
        (
            "permission denied for table items",
            'SELECT * FROM "shop"."items"',
            'GRANT SELECT ON TABLE "shop"."items" TO "ck role";',
        ),
        (
            "permission denied for table items",
            "UPDATE shop.items SET v = 1",
            'GRANT SELECT, UPDATE ON TABLE "shop"."items" TO "ck role";',
        ),
        (
            "permission denied for table Items",
            'INSERT INTO "Shop"."Items" VALUES (1)',
            'GRANT INSERT ON TABLE "Shop"."Items" TO "ck role";',
        ),
        (
            "permission denied for view v",
            "DELETE FROM v",
            'GRANT SELECT, DELETE ON TABLE "v" TO "ck role";',
        ),
        (
            "permission denied for sequence s",
            "SELECT pg_catalog.nextval('s')",
            'GRANT USAGE, SELECT ON SEQUENCE "s" TO "ck role";',
        ),
        (
            "permission denied for schema shop",
            "CREATE TABLE shop.t (v int)",
            'GRANT CREATE ON SCHEMA "shop" TO "ck role";',
        ),
        (
            "permission denied for schema shop",
            "SELECT * FROM shop.t",
            'GRANT USAGE ON SCHEMA "shop" TO "ck role";',
        ),
        (
            "permission denied for database app",
            "CREATE PUBLICATION p",
            'GRANT CREATE ON DATABASE "app" TO "ck role";',
        ),
        (
            "permission denied for function f",
            "SELECT public.f(1)",
            'GRANT EXECUTE ON FUNCTION "public"."f" TO "ck role";',
        ),
        (
            'permission denied for column "secret" of relation "users"',
            "SELECT secret FROM users",
            'GRANT SELECT ("secret") ON TABLE "users" TO "ck role";',
        ),
    ],
)
def test_a_missing_privilege_comes_with_its_grant(primary: str, statement: str, grant: str) -> None:
    assert hint_for(primary, statement).endswith(f"run: {grant}")


@given(schema=names, table=names)
def test_the_grant_names_the_table_as_the_statement_qualified_it(schema: str, table: str) -> None:
    statement = f"SELECT count(*) FROM {quote((schema, table))} WHERE true"
    hint = hint_for(f"permission denied for table {table}", statement)
    assert hint.endswith(f"GRANT SELECT ON TABLE {quote((schema, table))} TO {quote(ROLE)};")


@given(table=names)
def test_an_unqualified_table_is_granted_by_its_bare_name(table: str) -> None:
    hint = hint_for(f"permission denied for table {table}", f"SELECT * FROM {quote(table)}")
    assert hint.endswith(f"GRANT SELECT ON TABLE {quote(table)} TO {quote(ROLE)};")


@given(table=names)
def test_a_wrong_owner_names_the_object_and_the_role_to_grant_to(table: str) -> None:
    hint = hint_for(
        f"must be owner of table {table}", f"ALTER TABLE {quote(('app', table))} ADD x int"
    )
    assert f"owner of table {quote(('app', table))}" in hint
    assert hint.endswith(f"GRANT <owner of {quote(('app', table))}> TO {quote(ROLE)};")


def test_other_privilege_errors_name_the_role() -> None:
    hint = hint_for("permission denied to create role", "CREATE ROLE x")
    assert hint.startswith('"ck role" lacks a privilege for this: run as the object\'s owner')


def test_without_a_statement_the_grant_goes_to_the_plans_user() -> None:
    translated = translate(server_error("42501", "permission denied for table t"))
    assert translated is not None
    assert translated.hint.endswith('GRANT SELECT ON TABLE "t" TO <the plan\'s user>;')


@given(password=names | st.just(""))
def test_a_password_literal_never_survives(password: str) -> None:
    literal = sql.Literal(password).as_string().strip()  # '...' or E'...' with backslashes
    masked = mask(f"ALTER ROLE \"r\" WITH LOGIN PASSWORD {literal} VALID UNTIL 'infinity'")
    assert masked == f"ALTER ROLE \"r\" WITH LOGIN PASSWORD '{MASK}' VALID UNTIL 'infinity'"


def test_a_dollar_quoted_password_is_masked_too() -> None:
    assert (
        mask("CREATE ROLE r PASSWORD $x$it's$x$ LOGIN") == f"CREATE ROLE r PASSWORD '{MASK}' LOGIN"
    )


@given(
    salt=st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=", min_size=4
    ),
    key=st.text(
        alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=:", min_size=4
    ),
)
def test_a_scram_verifier_never_survives(salt: str, key: str) -> None:
    verifier = f"SCRAM-SHA-256$4096:{salt}${key}"
    masked = mask(f"SELECT '{verifier}' AS v, 'md5{'ab' * 16}' AS w")
    assert masked == f"SELECT 'SCRAM-SHA-256${MASK}' AS v, '{MASK}' AS w"


def test_the_message_says_where_what_and_which_statement_on_one_line() -> None:
    error = server_error(
        "42704",
        'role "nobody" does not exist',
        detail="no such role\nanywhere",
        statement="ALTER ROLE nobody\n  PASSWORD 'hunter2-secret'",
    )
    translated = translate(error, step="app/prepare.set_password")
    assert isinstance(translated, StepFailed)
    assert translated.message == (
        "app/prepare.set_password: on source/app db as ck role: 42704 undefined object: "
        'role "nobody" does not exist (no such role anywhere); '
        f"statement: ALTER ROLE nobody PASSWORD '{MASK}'"
    )
    assert "undefined object (42704)" in translated.hint
    assert translated.__cause__ is error
    assert "hunter2-secret" not in "".join(error.__notes__)


def test_a_long_detail_and_a_long_statement_are_cut() -> None:
    error = server_error("23505", "duplicate key", detail="x" * 500, statement="SELECT " * 200)
    translated = translate(error)
    assert translated is not None
    assert "x" * 201 not in translated.message
    assert translated.message.endswith("…")
    assert len(translated.message) < 450


def test_a_lock_timeout_is_retryable_and_the_driver_error_keeps_its_type() -> None:
    error = server_error("55P03", "canceling statement due to lock timeout", statement="LOCK t")
    assert isinstance(error, psycopg.errors.LockNotAvailable)
    translated = translate(error)
    assert isinstance(translated, Retryable)
    assert translated.delay > 0
    assert "pg_blocking_pids" in translated.hint


@pytest.mark.parametrize(
    "error",
    [
        server_error("08006", "connection failure"),
        server_error("57P01", "terminating connection due to administrator command"),
        server_error("57P03", "the database system is starting up"),
        psycopg.OperationalError("consuming input failed: server closed the connection"),
    ],
)
def test_a_lost_connection_says_the_command_is_resumable(error: psycopg.Error) -> None:
    translated = translate(error)
    assert isinstance(translated, ConnectionFailed)
    assert translated.exit_code == 2
    assert "resumable: run it again" in translated.hint


def test_anything_else_names_its_condition() -> None:
    translated = translate(server_error("42P01", 'relation "t" does not exist'))
    assert isinstance(translated, StepFailed)
    assert translated.message == '42P01 undefined table: relation "t" does not exist'
    assert condition("42P99") == "syntax error or access rule violation"  # by its class
    assert condition("ZZ999") == "an error"


@pytest.mark.parametrize(
    "error",
    [
        ValueError("a bug"),
        psycopg.ProgrammingError("the query has 1 placeholder but 2 parameters were passed"),
        psycopg.InterfaceError("a misuse of the driver"),
    ],
)
def test_bugs_are_not_translated(error: Exception) -> None:
    assert translate(error) is None


# -- the runner translates what a step raises ---------------------------------------------------


def flaky(errors: list[psycopg.Error]) -> Step:
    """A step whose apply raises each of `errors` in turn, then succeeds."""

    def apply(*, dry_run: bool) -> Sequence[Change]:
        if errors:
            raise errors.pop(0)
        return [Change("source", "done")]

    return Step("lock_table", apply)


def run_one(tmp_path: Path, step: Step) -> tuple[Runner, Journal, list[float]]:
    journal = Journal(FileStore(tmp_path, "m"), move="m")
    sleeps: list[float] = []
    return Runner(journal, move="m", dry_run=False, sleep=sleeps.append), journal, sleeps


def test_the_runner_retries_a_lock_timeout(tmp_path: Path) -> None:
    lock = "canceling statement due to lock timeout"
    step = flaky([server_error("55P03", lock), server_error("55P03", lock)])
    run, _, sleeps = run_one(tmp_path, step)
    [report] = run.run(Phase("p", (step,)), scope="db")
    assert report.outcome is Outcome.APPLIED
    assert sleeps == [2.0, 2.0]


def test_the_runner_records_a_database_error_as_one_line_naming_the_step(tmp_path: Path) -> None:
    denied = server_error(
        "42501", "permission denied for table t", statement='SELECT * FROM "s"."t"'
    )
    step = flaky([denied])
    run, journal, _ = run_one(tmp_path, step)
    with pytest.raises(StepFailed) as failed:
        run.run(Phase("p", (step,)), scope="db")
    message = failed.value.message
    assert message.startswith("db/p.lock_table: on source/app db as ck role: 42501 ")
    assert message.count("db/p.lock_table") == 1
    assert failed.value.hint.endswith('GRANT SELECT ON TABLE "s"."t" TO "ck role";')
    record = journal.get("db/p.lock_table")
    assert record is not None and record.error is not None
    assert record.error.startswith("on source/app db as ck role: 42501 insufficient privilege")


def test_a_probe_that_hits_a_database_error_fails_the_step_not_the_program(
    tmp_path: Path,
) -> None:
    def probe() -> bool:
        raise server_error("42P01", 'relation "t" does not exist', statement="SELECT 1 FROM t")

    step = Step("probe", lambda *, dry_run: [], probe)
    run, _, _ = run_one(tmp_path, step)
    with pytest.raises(StepFailed, match=r"^db/p.probe: on source/app db as ck role: 42P01 "):
        run.run(Phase("p", (step,)), scope="db")


# -- --verbose ----------------------------------------------------------------------------------


@pytest.fixture
def restored_logging() -> Iterator[None]:
    root, ours = logging.getLogger(), logging.getLogger("cutover")
    handlers, levels = root.handlers[:], (root.level, ours.level)
    yield
    root.handlers[:] = handlers
    root.setLevel(levels[0])
    ours.setLevel(levels[1])


@pytest.mark.usefixtures("restored_logging")
def test_verbose_is_known_after_setup() -> None:
    log.setup(verbose=True, json_format=False)
    assert log.is_verbose()
    log.setup(verbose=False, json_format=False)
    assert not log.is_verbose()
