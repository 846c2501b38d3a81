"""Writers' health probes against a real local HTTP server and real commands."""

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cutover.database import Pool
from cutover.engines.base import Traits
from cutover.engines.postgres import PerDatabase, Replication
from cutover.errors import WritersUnhealthy
from cutover.load import Health
from cutover.phases.switch import Switch
from cutover.plan import CommandWriter as CommandSpec
from cutover.plan import HttpWriter as HttpSpec
from cutover.plan import Plan
from cutover.writers.command import CommandWriter
from cutover.writers.http import HttpWriter


class Answers(BaseHTTPRequestHandler):
    """GET /<code> answers that code, with a body that names it."""

    def do_GET(self) -> None:
        code = int(self.path.strip("/"))
        self.send_response(code)
        self.end_headers()
        self.wfile.write(f"said {code}: postgresql://app:hunter2@db/app\n".encode())

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def http_writer(base: str, health: str | None) -> HttpWriter:
    spec = HttpSpec(stop=f"{base}/200", start=f"{base}/200", health=health, timeout=2.0)
    return HttpWriter("web", spec)


def test_an_http_writer_without_a_health_url_is_healthy(server: str) -> None:
    assert http_writer(server, None).is_healthy() == (True, "")


def test_an_http_writer_is_healthy_on_200_only(server: str) -> None:
    assert http_writer(server, f"{server}/200").is_healthy() == (True, "")
    ok, detail = http_writer(server, f"{server}/503").is_healthy()
    assert not ok
    assert detail.startswith("HTTP 503: said 503")
    assert "hunter2" not in detail  # redacted


def test_an_unreachable_health_url_is_unhealthy_not_an_error(server: str) -> None:
    ok, detail = http_writer(server, "http://127.0.0.1:9/").is_healthy()
    assert not ok and "failed" in detail


def command_writer(health: list[str] | None) -> CommandWriter:
    return CommandWriter("worker", CommandSpec(stop=["true"], start=["true"], health=health))


def test_a_command_writer_is_healthy_when_its_health_command_exits_0(tmp_path: Path) -> None:
    assert command_writer(None).is_healthy() == (True, "")
    assert command_writer(["true"]).is_healthy() == (True, "")
    failing = ["sh", "-c", "echo starting; echo 'cannot reach db' >&2; exit 4"]
    assert command_writer(failing).is_healthy() == (False, "exit 4: cannot reach db")
    quiet = command_writer(["sh", "-c", "exit 1"])
    assert quiet.is_healthy() == (False, "exit 1")
    missing = command_writer([str(tmp_path / "no-such-command")])
    ok, detail = missing.is_healthy()
    assert not ok and "could not start: No such file or directory" in detail


def test_the_load_is_healthy_after_an_acknowledged_write_and_no_failure_since() -> None:
    health = Health()
    assert health.check() == (False, "no write acknowledged since the last resume")
    health.succeeded()
    assert health.check() == (True, "")
    health.failed("[57P01] terminating connection")
    assert health.check() == (False, "[57P01] terminating connection")
    health.succeeded()
    assert health.check() == (True, "")
    health.resumed()
    assert health.check()[0] is False


def test_the_switch_checks_writers_until_the_deadline_then_warns(tmp_path: Path) -> None:
    """check_writers polls on the switch's clock and names each writer still unhealthy."""
    server = {"host": "127.0.0.1", "port": 1, "user": "u"}
    fixed = tmp_path / "fixed"
    the_plan = Plan.model_validate(
        {
            "move": "m",
            "source": server,
            "target": {**server, "port": 2},
            "databases": ["app"],
            "writers": [
                {"name": "plain", "command": {"stop": "true", "start": "true"}},
                {
                    "name": "worker",
                    "command": {
                        "stop": "true",
                        "start": "true",
                        "health": ["sh", "-c", f"test -e {fixed} || {{ echo down >&2; exit 1; }}"],
                    },
                },
            ],
            "thresholds": {"drain_timeout": "3s"},
            "state_dir": str(tmp_path),
        }
    )
    now = [0.0]

    def replication(db: str) -> Replication:
        raise AssertionError(f"replication of {db} asked by check_writers")

    engine = PerDatabase(
        "declared", Traits(False, False, False, False), the_plan, Pool({}), replication
    )
    checks = Switch(
        the_plan,
        Pool({}),
        engine,
        clock=lambda: now[0],
        sleep=lambda s: now.__setitem__(0, now[0] + s),
    )
    assert [c.where for c in checks.check_writers(dry_run=True)] == ["writer worker"]
    with pytest.raises(WritersUnhealthy) as raised:
        checks.check_writers(dry_run=False)
    assert raised.value.exit_code == 3
    assert "worker: exit 1: down" in raised.value.message
    assert "plain" not in raised.value.message
    assert now[0] == 3.0  # waited drain_timeout, on the switch's clock
    fixed.touch()
    assert [c.where for c in checks.check_writers(dry_run=False)] == ["writer worker"]
