"""The exporter over HTTP while a real move runs under load: lag, states, a server going away."""

import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cutover import api
from cutover.lab import Lab, free_port
from cutover.plan import load as load_plan
from cutover.types import Side
from tests.conftest import REPO, Result
from tests.integration.conftest import Running, move_of, set_replication

pytestmark = pytest.mark.integration

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(port: int) -> Samples:
    """One scrape over HTTP: every sample by name and labels."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        text = response.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The sample whose labels include `labels`, or None."""
    wanted = set(labels.items())
    found = [v for (n, ls), v in samples.items() if n == name and wanted <= ls]
    assert len(found) <= 1, f"{name}{labels} is ambiguous"
    return found[0] if found else None


def until(check: Callable[[], Samples | None], *, timeout: float = 30, what: str) -> Samples:
    """Scrape until `check` returns the samples it wanted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples = check()
        if samples is not None:
            return samples
        time.sleep(0.2)
    raise AssertionError(f"never seen within {timeout:g} s: {what}")


def spawn(*argv: str) -> "subprocess.Popen[str]":
    """The command line in a child process that runs on while the test goes on."""
    return subprocess.Popen(
        [sys.executable, "-m", "cutover", *argv],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@contextmanager
def exporter(plan: Path) -> Iterator[int]:
    """`cutover metrics` in its own process, as a Deployment runs it."""
    port = free_port()
    proc = spawn("metrics", "-p", str(plan), "--port", str(port), "--address", "127.0.0.1")
    try:
        until(lambda: _serving(port), timeout=15, what="the exporter serving")
        yield port
        assert proc.poll() is None, "the exporter died"
    finally:
        proc.terminate()
        _, stderr = proc.communicate(timeout=10)
        assert "Traceback" not in stderr, stderr


def _serving(port: int) -> Samples | None:
    """A scrape, or None while nothing serves one (not yet, or a process on its way out)."""
    try:
        return scrape(port) or None
    except OSError:
        return None


@pytest.mark.parametrize("engine", ["native"])
def test_the_exporter_shows_lag_rise_and_fall_states_change_and_a_server_go_down(
    lab: Lab, under_load: Running, cutover: Callable[..., Result]
) -> None:
    db, move = under_load.db, move_of(under_load)
    on_db = {"database": db, "move": move}
    with exporter(under_load.plan) as port:
        # Caught up: every table ready, streaming, lag small.
        caught_up = scrape(port)
        assert value(caught_up, "cutover_up", server="source") == 1
        assert value(caught_up, "cutover_up", server="target") == 1
        assert value(caught_up, "cutover_replication_streaming", **on_db) == 1
        ready = value(caught_up, "cutover_tables", state="ready", **on_db)
        assert ready is not None and ready >= 12
        assert value(caught_up, "cutover_tables", state="copying", **on_db) == 0
        assert value(caught_up, "cutover_phase", cutover_phase="start") == 1
        assert value(caught_up, "cutover_rollbacks_total", phase="switch") == 0
        assert (value(caught_up, "cutover_copy_rows_total", **on_db) or 0) > 0
        scrape_seconds = value(caught_up, "cutover_scrape_duration_seconds")
        assert scrape_seconds is not None and scrape_seconds < 1

        # The target stops applying: a switch now times out at the barrier and rolls back,
        # and the lag grows while the application writes on.
        set_replication(lab, under_load, enabled=False)
        failed = cutover("switch", "-p", str(under_load.plan), "--yes")
        assert failed.code == 1, failed.stdout + failed.stderr
        behind = until(
            lambda: (
                s
                if (value(s := scrape(port), "cutover_replication_lag_bytes", **on_db) or 0)
                > 256 * 1024
                else None
            ),
            what="the lag over 256 kB",
        )
        peak = value(behind, "cutover_replication_lag_bytes", **on_db)
        assert peak is not None
        assert value(behind, "cutover_replication_streaming", **on_db) == 0
        assert value(behind, "cutover_rollbacks_total", phase="switch") == 1
        assert value(behind, "cutover_phase", cutover_phase="switch") == 1

        # The target goes away: it shows as down, the source's side is still read.
        lab.stop("target")
        try:
            down = scrape(port)
            assert value(down, "cutover_up", server="target") == 0
            assert value(down, "cutover_up", server="source") == 1
            still = value(down, "cutover_replication_lag_bytes", **on_db)
            assert still is not None and still >= peak
            assert value(down, "cutover_tables", state="ready", **on_db) is None
            # Status is the same reading: the source's side, and why the rest is missing.
            reading = api.status(load_plan(under_load.plan))
            assert reading.servers == {Side.SOURCE: True, Side.TARGET: False}
            facts = reading.databases[db].replication
            assert facts.lag is not None and facts.lag.bytes >= peak
            assert (facts.subscribed, facts.progress) == (None, None)
            assert any("cannot connect to target" in p for p in reading.problems), reading.problems
        finally:
            lab.start("target")

        # Back, and applying again: the lag falls.
        set_replication(lab, under_load, enabled=True)
        recovered = until(
            lambda: (
                s
                if value(s := scrape(port), "cutover_up", server="target") == 1
                and value(s, "cutover_replication_streaming", **on_db) == 1
                and (value(s, "cutover_replication_lag_bytes", **on_db) or peak) < peak / 4
                else None
            ),
            what="the lag falling under a quarter of its peak",
        )
        assert value(recovered, "cutover_tables", state="ready", **on_db) == ready

        # The switch serves the same metrics while it runs.
        switch_port = free_port()
        switching = spawn(
            "switch", "-p", str(under_load.plan), "--yes", "--metrics-port", str(switch_port)
        )
        during: list[Samples] = []
        while switching.poll() is None:
            if (samples := _serving(switch_port)) is not None:
                during.append(samples)
            time.sleep(0.05)
        output = "".join(switching.communicate())
        assert switching.returncode == 0, output
        assert during and value(during[-1], "cutover_up", server="source") == 1

        switched = scrape(port)
        pause = value(switched, "cutover_write_pause_seconds", phase="switch")
        assert pause is not None and 0 < pause < 10
        assert value(switched, "cutover_phase", cutover_phase="switch") == 1
        assert value(switched, "cutover_replication_lag_bytes", **on_db) is None  # no slot left
        labels = "".join(str(k) for k in switched)
        assert lab.password_file.read_text().strip() not in labels
