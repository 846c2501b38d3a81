"""Operators' commands as real processes: writers, their health probes, repoint commands."""

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cutover.errors import StepFailed
from cutover.plan import CommandRepoint as RepointSpec
from cutover.plan import CommandWriter as WriterSpec
from cutover.plan import Server
from cutover.process import GRACE_SECONDS
from cutover.repoint.command import CommandRepoint
from cutover.writers.command import CommandWriter

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
