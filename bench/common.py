"""What several benchmarks share: the command line run as a user runs it, ledger times."""

import subprocess
import sys
import time
from datetime import datetime

from cutover.pg.connect import Connection


def cutover(*args: str) -> str:
    """`cutover ARGS` in a process of its own; its output, or the run stops with both."""
    result = subprocess.run(
        [sys.executable, "-m", "cutover", *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"cutover {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def seconds_between(a: str, b: str) -> float:
    """Seconds from one ledger time (ISO 8601) to another."""
    return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()


def settle(source: Connection, *, poll: float) -> None:
    """A runbook's wait: until the database's slot has confirmed the source's current LSN."""
    lsn = source.execute("SELECT pg_current_wal_lsn() AS lsn").fetchone()["lsn"]  # type: ignore[index]
    while not source.execute(
        "SELECT bool_and(confirmed_flush_lsn >= %s) AS ok FROM pg_replication_slots "
        "WHERE database = current_database()",
        (lsn,),
    ).fetchone()["ok"]:  # type: ignore[index]
        time.sleep(poll)
