"""A primary key for a 5-million-row table without one, three ways, in one run.

- cutover: `cutover backfill` (batches of pages sized to 0.25 s, no writer
  waiting longer than lock_timeout);
- the field runbook's loop: UPDATE 1,000 rows, sleep 10 s, again (measured on
  a few rounds and extrapolated to the whole table);
- plain `ALTER TABLE ... ADD COLUMN id bigserial PRIMARY KEY` (rewrites the
  table under an ACCESS EXCLUSIVE lock).

During each, a writer inserts into and updates the table about 50 times a
second and records its longest wait: the stall the application would see.

    .venv/bin/python bench/backfill.py --rows 5000000
"""

import argparse
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import yaml
from common import fresh_lab
from psycopg.conninfo import make_conninfo

from cutover.lab import Lab
from cutover.pg.connect import conninfo
from cutover.plan import dump


def uri(lab: Lab, db: str) -> str:
    return make_conninfo(**conninfo(lab.server("source"), db, label="source"))


class Writer(threading.Thread):
    """Writes to a table about 50 times a second; keeps its longest wait."""

    def __init__(self, dsn: str, table: str) -> None:
        super().__init__(daemon=True)
        self.conn = psycopg.connect(dsn, autocommit=True)
        self.table = table
        self.halt = threading.Event()
        self.longest = 0.0
        self.writes = 0
        self.errors = 0

    def run(self) -> None:
        n = 0
        while not self.halt.is_set():
            n += 1
            if n % 2:
                query = f"INSERT INTO {self.table} (v, note) VALUES (-{n}, 'new')"
            else:
                query = f"UPDATE {self.table} SET note = 'upd' WHERE v = {n * 7919 % 1000 + 1}"
            started = time.monotonic()
            try:
                self.conn.execute(query)
            except psycopg.Error:
                self.errors += 1
            self.longest = max(self.longest, time.monotonic() - started)
            self.writes += 1
            self.halt.wait(0.02)

    def stop(self) -> None:
        self.halt.set()
        self.join()
        self.conn.close()


def make_table(dsn: str, table: str, rows: int) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(f"CREATE TABLE {table} (v bigint, note text)")
        conn.execute(
            f"INSERT INTO {table} SELECT g, 'note ' || g FROM generate_series(1, {rows}) g"
        )
        conn.execute(f"VACUUM ANALYZE {table}")


def ours(lab: Lab, work: Path, db: str) -> tuple[float, float]:
    """Seconds of `cutover backfill`, and the writer's longest wait."""
    plan = yaml.safe_load(dump(lab.plan([db], move="backfillbench")))
    plan["state_dir"] = str(work / "state")
    plan_path = work / "plan.yaml"
    plan_path.write_text(yaml.safe_dump(plan))
    writer = Writer(uri(lab, db), "t_ours")
    writer.start()
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "cutover", "backfill", "-p", str(plan_path), "-t", "public.t_ours"],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - started
    writer.stop()
    if result.returncode != 0:
        raise SystemExit(result.stdout[-2000:] + result.stderr[-2000:])
    assert writer.errors == 0
    return seconds, writer.longest


def runbook(dsn: str, rounds: int) -> tuple[float, float]:
    """Rows/s of the runbook's loop over a few rounds, and the writer's longest wait."""
    writer = Writer(dsn, "t_loop")
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("ALTER TABLE t_loop ADD COLUMN id bigint")
        conn.execute("CREATE SEQUENCE t_loop_id_seq OWNED BY t_loop.id")
        conn.execute("ALTER TABLE t_loop ALTER COLUMN id SET DEFAULT nextval('t_loop_id_seq')")
        writer.start()
        started = time.monotonic()
        done = 0
        for i in range(rounds):
            conn.execute(
                "UPDATE t_loop SET id = nextval('t_loop_id_seq') "
                "WHERE v > %s AND v <= %s AND id IS NULL",
                (i * 1000, (i + 1) * 1000),
            )
            done += 1000
            time.sleep(10)
        seconds = time.monotonic() - started
    writer.stop()
    return done / seconds, writer.longest


def alter(dsn: str) -> tuple[float, float]:
    """Seconds of ADD COLUMN bigserial PRIMARY KEY, and the writer's longest wait."""
    writer = Writer(dsn, "t_alter")
    writer.start()
    time.sleep(0.2)
    with psycopg.connect(dsn, autocommit=True) as conn:
        started = time.monotonic()
        conn.execute("ALTER TABLE t_alter ADD COLUMN id bigserial PRIMARY KEY")
        seconds = time.monotonic() - started
    time.sleep(0.2)
    writer.stop()
    return seconds, writer.longest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=5_000_000)
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the runbook's loop")
    args = parser.parse_args()
    with fresh_lab("cutover-backfill-") as (work, lab):
        with psycopg.connect(uri(lab, "postgres"), autocommit=True) as conn:
            conn.execute("CREATE DATABASE bench")
        dsn = uri(lab, "bench")
        for table in ("t_ours", "t_loop", "t_alter"):
            print(f"{table}: {args.rows:,} rows ...", flush=True)
            make_table(dsn, table, args.rows)
        seconds, our_stall = ours(lab, work, "bench")
        print(f"cutover backfill: {seconds:.1f} s, longest write wait {our_stall:.3f} s")
        loop_rate, loop_stall = runbook(dsn, args.rounds)
        print(f"runbook loop: {loop_rate:.0f} rows/s, longest write wait {loop_stall:.3f} s")
        alter_seconds, alter_stall = alter(dsn)
        print(f"ALTER TABLE: {alter_seconds:.1f} s, longest write wait {alter_stall:.3f} s")
        with psycopg.connect(dsn) as conn:
            row = conn.execute("SELECT count(*), count(DISTINCT cutover_id) FROM t_ours").fetchone()
        assert row is not None and row[0] == row[1], "cutover left rows unnumbered"
    rate = args.rows / seconds
    print()
    print(f"table: {args.rows:,} rows without a key; a writer at ~50 writes/s during each way")
    print(f"{'way':<42}{'rows/s':>12}{'whole table':>14}{'longest stall':>15}")
    print(f"{'cutover backfill':<42}{rate:>12,.0f}{seconds:>12.1f} s{our_stall:>13.3f} s")
    loop_total = args.rows / loop_rate
    print(
        f"{'runbook loop (1,000 rows, sleep 10 s)':<42}{loop_rate:>12,.0f}"
        f"{loop_total / 86400:>11.1f} d{loop_stall:>13.3f} s"
    )
    alter_rate = args.rows / alter_seconds
    print(
        f"{'ALTER TABLE ADD COLUMN bigserial PK':<42}{alter_rate:>12,.0f}"
        f"{alter_seconds:>12.1f} s{alter_stall:>13.3f} s"
    )
    print(f"cutover vs the runbook loop: {rate / loop_rate:,.0f}x the rows/s")
    print(
        f"cutover vs ALTER TABLE: {seconds / alter_seconds:.1f}x the time, its longest stall "
        f"{our_stall:.3f} s against {alter_stall:.3f} s"
    )


if __name__ == "__main__":
    main()
