"""The lab's write load: an application stand-in to switch under.

Worker threads insert, update and delete rows across the load tables without
pause. Each one reads its connection string from an env file whenever it
(re)connects, so once the switch repoints the file the workers follow to the
target. An HTTP control makes the load a writer tier of kind `http`:
POST /pause, POST /resume, GET /drained (200 once paused with no write in
flight), GET /healthy (200 once a write was acknowledged since the last resume
and none failed since the last success; 503 with the last error otherwise).
Every write is logged before it is sent (`try`) and once the server
acknowledged it (`ack`), with the port of the server that took it, so a test
can prove that no acknowledged write was lost and that the source took none
after the fence. A write that fails is logged too (`error`, with its
SQLSTATE), so a test can prove from the application's side that the move
caused no error but the ones the fence exists for.

The env file may name several connection strings (`keys`), one per
application role (the owner of the tables, a role writing with grants):
the workers take them in turn.
"""

import json
import random
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, TextIO

from cutover.pg import load as sql
from cutover.pg.connect import Connection


def read_dsn(env_file: Path, key: str) -> str:
    """The value of `key` in an env file."""
    for line in env_file.read_text().splitlines():
        if line.startswith(f"{key}="):
            return line[len(key) + 1 :].strip().strip("'\"")
    raise KeyError(f"{key} is not set in {env_file}")


class Gate:
    """Pauses the workers between writes and knows when none is in flight."""

    def __init__(self) -> None:
        self._open = threading.Event()
        self._open.set()
        self._lock = threading.Lock()
        self._in_flight = 0

    def pause(self) -> None:
        """No new write starts."""
        self._open.clear()

    def resume(self) -> None:
        """Writes start again."""
        self._open.set()

    def drained(self) -> bool:
        """Paused, and no write in flight."""
        with self._lock:
            return not self._open.is_set() and self._in_flight == 0

    @contextmanager
    def write(self, stop: threading.Event) -> Iterator[bool]:
        """Wait until writes may start; yields False when the load is stopping."""
        while not self._open.wait(0.05):
            if stop.is_set():
                yield False
                return
        with self._lock:
            self._in_flight += 1
        try:
            yield not stop.is_set()
        finally:
            with self._lock:
                self._in_flight -= 1


class Health:
    """Whether the load writes successfully: acknowledged since resuming, no failure since."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._acked = 0  # since the last resume
        self._error: str | None = None  # the last failure, unless a write succeeded after it

    def resumed(self) -> None:
        """Writes start again: health is proven anew."""
        with self._lock:
            self._acked = 0

    def succeeded(self) -> None:
        """A write was acknowledged."""
        with self._lock:
            self._acked += 1
            self._error = None

    def failed(self, error: str) -> None:
        """A write failed."""
        with self._lock:
            self._error = error

    def check(self) -> tuple[bool, str]:
        """Healthy, or why not."""
        with self._lock:
            if self._error is not None:
                return False, self._error
            if not self._acked:
                return False, "no write acknowledged since the last resume"
            return True, ""


@dataclass
class WriteLog:
    """Append-only JSON lines of every write tried and acknowledged."""

    handle: TextIO
    lock: threading.Lock = field(default_factory=threading.Lock)
    acked: int = 0

    def record(self, entry: dict[str, Any]) -> None:
        """Write one line and flush it."""
        entry["at"] = datetime.now(UTC).isoformat(timespec="microseconds")
        with self.lock:
            self.handle.write(json.dumps(entry) + "\n")
            self.handle.flush()
            if entry["ack"]:
                self.acked += 1


@dataclass
class Load:
    """The whole load: workers, control server, log."""

    env_file: Path
    keys: tuple[str, ...]
    tables: list[str]
    log: WriteLog
    workers: int = 4
    rate: float = 300.0  # writes per second, all workers together
    gate: Gate = field(default_factory=Gate)
    health: Health = field(default_factory=Health)
    stop: threading.Event = field(default_factory=threading.Event)
    _values: Iterator[int] = field(default_factory=lambda: iter(range(1, 1 << 62)))
    _values_lock: threading.Lock = field(default_factory=threading.Lock)

    def _next_value(self) -> int:
        with self._values_lock:
            return next(self._values)

    def run_worker(self, seed: int) -> None:
        """Write until stopped; reconnect (re-reading the env file) after any failure."""
        rng = random.Random(seed)
        key = self.keys[seed % len(self.keys)]
        mine: dict[str, list[int]] = {t: [] for t in self.tables}
        conn: Connection | None = None
        interval = self.workers / self.rate if self.rate > 0 else 0.0
        while not self.stop.is_set():
            with self.gate.write(self.stop) as go:
                if not go:
                    break
                try:
                    if conn is None or conn.closed:
                        conn = sql.connect_dsn(read_dsn(self.env_file, key))
                    self._write_once(conn, rng, mine)
                    self.health.succeeded()
                except (sql.DatabaseError, OSError, KeyError) as exc:
                    error = str(exc).strip().splitlines()[0] if str(exc) else repr(exc)
                    code = sql.error_code(exc)
                    self.log.record(
                        {"op": "error", "key": key, "code": code, "error": error, "ack": False}
                    )
                    self.health.failed(f"[{code}] {error}")
                    if conn is not None:
                        conn.close()
                    conn = None
                    time.sleep(0.05)
            if interval:
                time.sleep(interval * rng.uniform(0.5, 1.5))
        if conn is not None:
            conn.close()

    def _write_once(self, conn: Connection, rng: random.Random, mine: dict[str, list[int]]) -> None:
        table = rng.choice(self.tables)
        known = mine[table]
        roll = rng.random()
        value = self._next_value()
        port: int | None  # of the server that took the write, as it says itself
        if roll < 0.6 or not known:
            self.log.record({"op": "insert", "table": table, "v": value, "ack": False})
            row_id, port = sql.insert(conn, table, value)
            known.append(row_id)
            self.log.record(
                {
                    "op": "insert",
                    "table": table,
                    "id": row_id,
                    "v": value,
                    "port": port,
                    "ack": True,
                }
            )
        elif roll < 0.9:
            row_id = rng.choice(known)
            self.log.record(
                {"op": "update", "table": table, "id": row_id, "v": value, "ack": False}
            )
            port = sql.update(conn, table, row_id, value)  # of the server that took it
            self.log.record(
                {
                    "op": "update",
                    "table": table,
                    "id": row_id,
                    "v": value,
                    "port": port,
                    "ack": True,
                }
            )
        else:
            row_id = known.pop(rng.randrange(len(known)))
            self.log.record({"op": "delete", "table": table, "id": row_id, "ack": False})
            port = sql.delete(conn, table, row_id)
            self.log.record(
                {"op": "delete", "table": table, "id": row_id, "port": port, "ack": True}
            )

    def serve(self, port: int) -> ThreadingHTTPServer:
        """Start the control endpoint on 127.0.0.1:port (in a thread)."""
        gate, health = self.gate, self.health

        class Control(BaseHTTPRequestHandler):
            def _answer(self, code: int, text: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", "text/plain")
                self.end_headers()
                self.wfile.write(text.encode())

            def do_POST(self) -> None:
                if self.path == "/pause":
                    gate.pause()
                    self._answer(200, "paused\n")
                elif self.path == "/resume":
                    health.resumed()
                    gate.resume()
                    self._answer(200, "writing\n")
                else:
                    self._answer(404, "POST /pause or /resume\n")

            def do_GET(self) -> None:
                if self.path == "/drained":
                    drained = gate.drained()
                    self._answer(200 if drained else 409, "drained\n" if drained else "busy\n")
                elif self.path == "/healthy":
                    ok, why = health.check()
                    self._answer(200 if ok else 503, "healthy\n" if ok else f"{why}\n")
                else:
                    self._answer(404, "GET /drained or /healthy\n")

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        server = ThreadingHTTPServer(("127.0.0.1", port), Control)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    def run(self, *, port: int, duration: float | None) -> None:
        """Run workers and control until `duration` passes or `stop` is set."""
        server = self.serve(port)
        threads = [
            threading.Thread(target=self.run_worker, args=(seed,), daemon=True)
            for seed in range(self.workers)
        ]
        for thread in threads:
            thread.start()
        try:
            self.stop.wait(duration)
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=10)
            server.shutdown()


@dataclass(frozen=True)
class Audit:
    """What the write log says about the target."""

    acknowledged: int
    missing: list[str]  # acknowledged writes the target does not show
    after_fence: int  # writes the source acknowledged after the fence
    errors: list[str]  # errors the application saw that the switch's fence does not explain
    fenced_errors: int  # errors of the fence: refused logins, ended sessions, in the switch


# What the fence does to the application: its sessions end, its logins are refused, its
# transactions become read-only; a lost connection has no SQLSTATE.
FENCE_CODES = {None, "57P01", "28000", "25006", "08000", "08003", "08006"}
FENCE_GRACE = 5.0  # seconds after the switch ends in which a worker meets its ended session


def audit(
    log_path: Path,
    rows: dict[str, dict[int, int]],
    *,
    source_port: int,
    fenced_at: str | None,
    switch_window: tuple[str, str] | None = None,
) -> Audit:
    """Check every acknowledged write against the target's rows (table -> id -> value).

    A row's value may be its last acknowledged one or any later write that was
    tried but not acknowledged (it may have committed just as a connection dropped).
    An error the application saw counts as the fence's only when its kind is one the
    fence causes and it came within `switch_window` (first writer stopped, last writer
    started; ISO times), give or take FENCE_GRACE.
    """
    errors: list[str] = []
    fenced_errors = 0
    allowed: dict[tuple[str, int], set[int]] = {}
    deleted_acked: set[tuple[str, int]] = set()
    delete_tried: set[tuple[str, int]] = set()
    acknowledged = after_fence = 0
    for line in log_path.read_text().splitlines():
        entry = json.loads(line)
        if entry["op"] == "error":
            if _explained_by_fence(entry, switch_window):
                fenced_errors += 1
            else:
                errors.append(f"{entry['at']} {entry['key']}: [{entry['code']}] {entry['error']}")
            continue
        if not entry["ack"]:
            if entry["op"] == "delete":
                delete_tried.add((entry["table"], entry["id"]))
            elif entry["op"] == "update":
                allowed.setdefault((entry["table"], entry["id"]), set()).add(entry["v"])
            continue
        acknowledged += 1
        if fenced_at and entry["port"] == source_port and entry["at"] > fenced_at:
            after_fence += 1
        key = (entry["table"], entry["id"])
        if entry["op"] == "delete":
            deleted_acked.add(key)
        else:
            allowed[key] = {entry["v"]}  # later tries are added after this line
    missing = []
    for key, values in allowed.items():
        table, row_id = key
        present = rows.get(table, {}).get(row_id)
        if key in deleted_acked:
            if present is not None:
                missing.append(f"{table} id {row_id}: deleted, but still on the target")
        elif present is None:
            if key not in delete_tried:
                missing.append(f"{table} id {row_id}: acknowledged, but not on the target")
        elif present not in values:
            missing.append(
                f"{table} id {row_id}: value {present}, expected one of {sorted(values)}"
            )
    return Audit(acknowledged, missing, after_fence, errors, fenced_errors)


def _explained_by_fence(entry: dict[str, Any], window: tuple[str, str] | None) -> bool:
    if window is None or entry["code"] not in FENCE_CODES:
        return False
    at = datetime.fromisoformat(entry["at"])
    began, ended = (datetime.fromisoformat(t) for t in window)
    return began <= at <= ended + timedelta(seconds=FENCE_GRACE)
