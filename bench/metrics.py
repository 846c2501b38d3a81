"""Time of one scrape of `cutover metrics` for a move of many tables, next to a naive exporter.

One run: a database of `--tables` tables (`--rows` rows each) on a fresh lab,
moved with the native engine (`cutover prepare`, `start --wait`), then
`--scrapes` scrapes of `cutover metrics` over HTTP, timed from request to the
last byte. The naive peer is what a home-made exporter does: the slot's lag,
then one query per table for its size and one for its subscription state,
on open connections. Both read while the replication runs.

    .venv/bin/python bench/metrics.py --tables 1000 --scrapes 50
"""

import argparse
import statistics
import subprocess
import sys
import time
import urllib.request

import yaml
from common import cutover, fresh_lab

from cutover.lab import Lab, free_port
from cutover.pg.connect import Connection
from cutover.pg.connect import connect as cutover_connect
from cutover.plan import dump

DB = "many_tables"


def connect(lab: Lab, side: str, db: str = "postgres") -> Connection:
    return cutover_connect(lab.server(side), db, label=side)


def make_database(lab: Lab, tables: int, rows: int) -> None:
    with connect(lab, "source") as conn:
        conn.execute(f"CREATE DATABASE {DB}")
    with connect(lab, "source", DB) as conn, conn.transaction():
        for i in range(tables):
            conn.execute(f"CREATE TABLE t{i:04} (id bigint PRIMARY KEY, v text)")
            conn.execute(
                f"INSERT INTO t{i:04} SELECT g, md5(g::text) FROM generate_series(1, {rows}) g"
            )


def scrape(port: int) -> tuple[float, str]:
    began = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        text = response.read().decode()
    return time.perf_counter() - began, text


def naive_scrape(source: Connection, target: Connection, move: str) -> float:
    """A slot query, then a size query and a state query per table."""
    began = time.perf_counter()
    source.execute(
        "SELECT pg_current_wal_lsn() - confirmed_flush_lsn FROM pg_replication_slots "
        "WHERE slot_name LIKE %s",
        (f"cutover_{move}%",),
    ).fetchall()
    tables = target.execute(
        "SELECT srrelid::regclass::text AS t FROM pg_subscription_rel"
    ).fetchall()
    for row in tables:
        source.execute("SELECT pg_table_size(%s::regclass)", (row["t"],)).fetchone()
        target.execute(
            "SELECT srsubstate FROM pg_subscription_rel WHERE srrelid = %s::regclass", (row["t"],)
        ).fetchone()
    return time.perf_counter() - began


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tables", type=int, default=1000)
    parser.add_argument("--rows", type=int, default=10, help="rows per table")
    parser.add_argument("--scrapes", type=int, default=50)
    args = parser.parse_args()
    with fresh_lab("cutover-bench-") as (work, lab):
        exporter = None
        try:
            began = time.monotonic()
            make_database(lab, args.tables, args.rows)
            plan = work / "plan.yaml"
            data = yaml.safe_load(dump(lab.plan([DB], move="bench")))
            data["state_dir"] = str(work / "state")
            plan.write_text(yaml.safe_dump(data))
            cutover("prepare", "-p", str(plan))
            cutover("start", "-p", str(plan), "--wait")
            print(f"{args.tables} tables moved and streaming in {time.monotonic() - began:.0f} s")

            port = free_port()
            exporter = subprocess.Popen(
                [sys.executable, "-m", "cutover", "metrics", "-p", str(plan), "--port", str(port)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for _ in range(100):
                try:
                    _, text = scrape(port)  # also the warm-up: connections opened
                    break
                except OSError:
                    time.sleep(0.1)
            ready = [
                line
                for line in text.splitlines()
                if line.startswith("cutover_tables{") and 'state="ready"' in line
            ]
            print(ready[0])
            ours = [scrape(port)[0] for _ in range(args.scrapes)]
            with connect(lab, "source", DB) as source, connect(lab, "target", DB) as target:
                naive_scrape(source, target, "bench")  # warm-up
                naive = [naive_scrape(source, target, "bench") for _ in range(args.scrapes)]
        finally:
            if exporter is not None:
                exporter.terminate()
                exporter.wait(timeout=10)
    ours_median, naive_median = statistics.median(ours), statistics.median(naive)
    print()
    print(f"{args.tables} replicated tables, {args.scrapes} scrapes each")
    print(
        f"cutover metrics over HTTP: median {ours_median * 1000:.1f} ms, "
        f"p95 {percentile(ours, 0.95) * 1000:.1f} ms, max {max(ours) * 1000:.1f} ms"
    )
    print(f"naive per-table queries: median {naive_median * 1000:.1f} ms")
    print(f"ratio naive / cutover: {naive_median / ours_median:.1f}x")


if __name__ == "__main__":
    main()
