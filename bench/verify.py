"""Time of `cutover verify --mode checksum` next to a full read of the same database by pg_dump.

One `pgbench -i -s 70` database (about 1 GB) on the lab's source, moved to the
target by `cutover prepare` and `start --wait` (replication keeps streaming).
Then, alternating, `--runs` times each:

- `cutover verify --mode checksum`: every row of both sides hashed and compared
  (both servers read at the same time, a barrier first: the move is live);
- `pg_dump -Fp -f /dev/null` of the source database: one full read, no compression.

Medians and their ratio are printed at the end; the target is at most 1.5x.

    .venv/bin/python bench/verify.py --scale 70 --runs 3
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import yaml
from common import fresh_lab
from initial_copy import run, uri  # the sibling benchmark: same way to run a tool

from cutover.pg import tools
from cutover.pg.connect import connect
from cutover.plan import dump

DB = "bench"


def verify(plan: Path, mode: str) -> tuple[float, dict[str, object]]:
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "cutover", "verify", "-p", str(plan), "--mode", mode, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    seconds = time.monotonic() - started
    if result.returncode != 0:
        raise SystemExit(f"verify exited {result.returncode}:\n{result.stdout}\n{result.stderr}")
    return seconds, json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=70, help="pgbench scale (70 is about 1 GB)")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    times: dict[str, list[float]] = {"checksum": [], "pg_dump": [], "count": []}
    with fresh_lab("cutover-verify-") as (work, lab):
        with connect(lab.server("source"), label="source") as conn:
            conn.execute(f"CREATE DATABASE {DB}")
        print(f"pgbench -i -s {args.scale} ...", flush=True)
        pgbench = str(tools.bindir() / "pgbench")
        run([pgbench, "-i", "-q", "-s", str(args.scale), uri(lab, "source", DB)])
        plan = work / "plan.yaml"
        data = yaml.safe_load(dump(lab.plan([DB], move="bench")))
        data["state_dir"] = str(work / "state")
        plan.write_text(yaml.safe_dump(data))
        for step in (["prepare"], ["start", "--wait"]):
            run([sys.executable, "-m", "cutover", *step, "-p", str(plan)])
        with connect(lab.server("source"), DB, label="source") as conn:
            size = conn.execute("SELECT pg_database_size(current_database()) AS n").fetchone()
        for side in ("source", "target"):
            with connect(lab.server(side), DB, label=side) as conn:
                conn.execute("VACUUM ANALYZE")
                conn.execute("CHECKPOINT")
        os.sync()
        dump_argv = [str(tools.bindir() / "pg_dump"), "-Fp", "-f", "/dev/null"]
        for i in range(args.runs):
            order = ["checksum", "pg_dump"] if i % 2 == 0 else ["pg_dump", "checksum"]
            for way in order:
                if way == "checksum":
                    seconds, report = verify(plan, "checksum")
                    assert report["differences"] == 0, report
                    times["checksum"].append(seconds)
                    print(f"  verify --mode checksum: {seconds:.1f} s", flush=True)
                else:
                    seconds = run([*dump_argv, uri(lab, "source", DB)])
                    times["pg_dump"].append(seconds)
                    print(f"  pg_dump -Fp -f /dev/null: {seconds:.1f} s", flush=True)
            seconds, _ = verify(plan, "count")
            times["count"].append(seconds)
            print(f"  verify --mode count: {seconds:.1f} s", flush=True)
    median = {way: statistics.median(values) for way, values in times.items()}
    assert size is not None
    print()
    print(f"database: pgbench scale {args.scale}, {int(size['n']) / 1024**3:.2f} GB")
    print(f"median of {args.runs} runs:")
    print(f"  cutover verify --mode checksum (both sides): {median['checksum']:.1f} s")
    print(f"  pg_dump -Fp -f /dev/null (one side):        {median['pg_dump']:.1f} s")
    print(f"  cutover verify --mode count (both sides):    {median['count']:.1f} s")
    print(f"ratio checksum / pg_dump: {median['checksum'] / median['pg_dump']:.2f}x")


if __name__ == "__main__":
    main()
