"""Operators' commands as real processes: writers, their health probes, repoint commands."""

import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from cutover.errors import StepFailed
from cutover.lab import Lab
from cutover.plan import CommandRepoint as RepointSpec
from cutover.plan import CommandWriter as WriterSpec
from cutover.plan import Server
from cutover.process import GRACE_SECONDS
from cutover.repoint.command import CommandRepoint
from cutover.writers.command import CommandWriter
from tests.conftest import Databases, Result, connect

pytestmark = pytest.mark.integration

# A command that leaves a child behind (which would act `delay` seconds later) and hangs.
HANGS = "({trap} sleep {delay}; touch '{marker}') & sleep 30"
TIMEOUT = 1.0
TARGET = Server(host="127.0.0.1", port=5432, user="app")


def writer_stop(argv: list[str]) -> str:
    spec = WriterSpec(stop=argv, start=["true"], timeout=TIMEOUT)
    with pytest.raises(StepFailed) as failed:
        CommandWriter("worker", spec).stop(dry_run=False)
    return failed.value.message


def writer_health(argv: list[str]) -> str:
    spec = WriterSpec(stop=["true"], start=["true"], health=argv, timeout=TIMEOUT)
    ok, detail = CommandWriter("worker", spec).is_healthy()
    assert not ok
    return f"writer worker: {detail}"


def repoint(argv: list[str]) -> str:
    spec = RepointSpec(run=argv, timeout=TIMEOUT)
    with pytest.raises(StepFailed) as failed:
        CommandRepoint("app", spec, ["app"]).point_to(TARGET, dry_run=False)
    return failed.value.message


@pytest.mark.parametrize(
    ("run", "ignores_term"),
    [(writer_stop, False), (writer_stop, True), (writer_health, False), (repoint, False)],
    ids=["writer-stop", "writer-stop-ignoring-sigterm", "writer-health", "repoint"],
)
def test_a_command_past_its_timeout_is_ended_with_what_it_started(
    run: Callable[[list[str]], str], ignores_term: bool, tmp_path: Path
) -> None:
    """Nothing the command started acts after the step gave up on it (SIGKILL if need be)."""
    marker = tmp_path / "marker"
    # A child that ignores SIGTERM outlives the grace only if SIGKILL never comes.
    delay = TIMEOUT + GRACE_SECONDS + 1 if ignores_term else 3
    trap = "trap '' TERM;" if ignores_term else ""
    began = time.monotonic()
    argv = ["sh", "-c", HANGS.format(trap=trap, delay=delay, marker=marker)]
    said = run(argv)
    assert time.monotonic() - began < TIMEOUT + 2 * GRACE_SECONDS + 1  # not the 30 s hang
    time.sleep(max(0.0, began + delay + 1 - time.monotonic()))
    assert not marker.exists()
    what = {
        writer_stop: "writer worker: the stop command",
        writer_health: "writer worker: the health command",
        repoint: "repoint app: the command",
    }[run]
    assert said == (
        f"{what}: sh -c {argv[2]} did not finish within 1 s; it was ended with everything "
        "it started"
    )


def test_a_writer_command_that_times_out_shows_no_secret_and_gets_secrets_by_reference(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    tmp_path: Path,
) -> None:
    """Its command line is masked in the dry run, the error, the JSON log, the ledger and
    status; the plan's `env` map gives the commands a secret without showing it."""
    db = databases.create()
    with connect(lab.server("source"), db) as conn:
        conn.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1)")
    option, after_flag, in_url = (f"pw-{uuid.uuid4().hex[:8]}" for _ in range(3))
    by_reference = f"ref-{uuid.uuid4().hex[:8]}"
    received = tmp_path / "received"
    plan = str(
        write_plan(
            [db],
            move=f"t{uuid.uuid4().hex[:8]}",
            writers=[
                {
                    "name": "app",
                    "command": {
                        "stop": [
                            *("sh", "-c", "sleep 30", "sh", f"--password={option}"),
                            *("--api-token", after_flag, f"postgresql://app:{in_url}@db/app"),
                        ],
                        "start": ["sh", "-c", f"printf %s \"$APP_PASSWORD\" > '{received}'"],
                        "timeout": "1s",
                        "env": {"APP_PASSWORD": "env:APP_SECRET"},
                    },
                }
            ],
            thresholds={"lag_window": "0s"},
        )
    )
    env = {"APP_SECRET": by_reference}
    for command in (["prepare"], ["start", "--wait"]):
        done = cutover(*command, "-p", plan, env=env)
        assert done.code == 0, done.stdout + done.stderr
    planned = cutover("switch", "-p", plan, "--dry-run", env=env)
    assert planned.code == 0, planned.stdout + planned.stderr
    switched = cutover("--log-format", "json", "-v", "switch", "-p", plan, "--yes", env=env)
    assert switched.code == 1, switched.stdout + switched.stderr
    assert "writer app: the stop command: sh -c sleep 30 sh --password=********" in (
        " ".join(switched.stderr.split())
    )
    assert "did not finish within 1 s" in switched.stderr
    assert '"level": "info"' in switched.stderr  # the JSON log was written
    assert received.read_text() == by_reference  # the rollback started the writer again
    ledger = "".join(p.read_text() for p in (Path(plan).parent / "state").glob("*.ledger.json*"))
    status = cutover("status", "-p", plan, "--json", env=env)
    shown = [planned.stdout, planned.stderr, switched.stdout, switched.stderr, ledger]
    shown += [status.stdout, status.stderr]
    for secret in (option, after_flag, in_url, by_reference):
        assert not [text for text in shown if secret in text], secret
    assert "--api-token ********" in planned.stdout
