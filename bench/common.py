"""What several benchmarks share: a lab of their own, the command line run as a user runs
it, ledger times."""

import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

from cutover.lab import Lab
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


@contextmanager
def fresh_lab(prefix: str) -> Iterator[tuple[Path, Lab]]:
    """Two servers of a lab without sample data, in a folder of its own (`prefix`), stopped
    and deleted at the end: the folder and the lab."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        work = Path(tmp)
        lab = Lab(work / "lab")
        lab.up(sample=False)
        try:
            yield work, lab
        finally:
            lab.down(purge=True)
