"""Time to a fully copied and indexed target, cutover next to its peers, in one run.

For each run, a fresh `pgbench -i -s 70` database (about 1 GB) on the lab's
source is copied three ways to the lab's target, each into its own database:

- cutover: `cutover prepare` then `cutover start --wait --parallel 2` (schema,
  copy in the slot's snapshot, indexes, then streaming until caught up);
- pg_dump -Fd -j2 | pg_restore -j2;
- pgcopydb clone --table-jobs 2 --index-jobs 2 (Debian package pgcopydb).

Medians of the runs and their ratios are printed at the end.

    WITH_BENCH=1 scripts/ensure-system.sh     # installs pgcopydb
    .venv/bin/python bench/initial_copy.py --scale 70 --runs 3
"""

import argparse
import compileall
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import yaml
from common import fresh_lab
from psycopg.conninfo import make_conninfo

from cutover.lab import Lab
from cutover.pg import tools
from cutover.pg.connect import conninfo
from cutover.plan import dump

TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")


def uri(lab: Lab, side: str, db: str) -> str:
    return make_conninfo(**conninfo(lab.server(side), db, label=side))


def run(argv: list[str], **kwargs: object) -> float:
    started = time.monotonic()
    result = subprocess.run(  # type: ignore[call-overload]
        argv, capture_output=True, text=True, errors="replace", check=False, **kwargs
    )
    if result.returncode != 0:
        raise SystemExit(f"{argv[0]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")
    return time.monotonic() - started


def counts(lab: Lab, db: str) -> dict[str, int]:
    with psycopg.connect(uri(lab, "target", db)) as conn:
        return {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}  # type: ignore[index]


def indexes(lab: Lab, db: str) -> list[str]:
    """The target's pgbench indexes, but the key cutover adds to pgbench_history (it has none)."""
    with psycopg.connect(uri(lab, "target", db)) as conn:
        rows = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE tablename LIKE 'pgbench%%' "
            "AND indexname NOT LIKE 'cutover\\_%%' ORDER BY 1"
        ).fetchall()
        return [r[0] for r in rows]


def cutover_copy(lab: Lab, work: Path, db: str, jobs: int) -> tuple[float, dict[str, float]]:
    """prepare + start --wait into the target's `db`; the seconds, and the steps' own."""
    plan = yaml.safe_load(dump(lab.plan([db], move=f"copy_{db}")))
    plan["state_dir"] = str(work / "state")
    plan_path = work / f"plan_{db}.yaml"
    plan_path.write_text(yaml.safe_dump(plan))
    cli = [sys.executable, "-m", "cutover"]
    seconds = run([*cli, "prepare", "-p", str(plan_path)]) + run(
        [*cli, "start", "-p", str(plan_path), "--wait", "--parallel", str(jobs)]
    )
    ledger = json.loads((work / "state" / f"copy_{db}.ledger.json").read_text())
    steps = {
        key.split("/")[-1]: record["seconds"]
        for key, record in ledger["steps"].items()
        if record["seconds"] and record["seconds"] > 0.5
    }
    return seconds, steps


def dump_restore(lab: Lab, work: Path, db: str, jobs: int) -> float:
    """pg_dump -Fd -jN, then pg_restore -jN into the target's `<db>_dump`."""
    bindir = tools.bindir()
    dump_dir = work / f"dump_{db}"
    source_env = tools.client_env(lab.server("source"), db, label="source")
    target_env = tools.client_env(lab.server("target"), f"{db}_dump", label="target")
    dumped = run([str(bindir / "pg_dump"), "-Fd", f"-j{jobs}", "-f", str(dump_dir)], env=source_env)
    restored = run(
        [str(bindir / "pg_restore"), f"-j{jobs}", "-d", f"{db}_dump", str(dump_dir)],
        env=target_env,
    )
    shutil.rmtree(dump_dir)
    return dumped + restored


def pgcopydb(lab: Lab, work: Path, db: str, jobs: int) -> float:
    """pgcopydb clone with N table jobs and N index jobs into the target's `<db>_pgcopydb`."""
    return run(
        [
            "pgcopydb",
            "clone",
            "--source",
            uri(lab, "source", db),
            "--target",
            uri(lab, "target", f"{db}_pgcopydb"),
            "--table-jobs",
            str(jobs),
            "--index-jobs",
            str(jobs),
            "--dir",
            str(work / f"pgcopydb_{db}"),
            "--no-owner",
        ],
        env={"PATH": f"{tools.bindir()}:/usr/bin:/bin", "HOME": str(work)},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=70, help="pgbench scale (70 is about 1 GB)")
    parser.add_argument("--runs", type=int, default=3, help="runs of each way; medians are shown")
    parser.add_argument("--jobs", type=int, default=2, help="parallel jobs for every way")
    args = parser.parse_args()
    # cutover's bytecode, as an installed package has it: where bytecode is not written
    # (PYTHONDONTWRITEBYTECODE), each command would compile cutover again, 0.2 s here.
    compileall.compile_dir(Path(__file__).resolve().parent.parent / "cutover", quiet=1)
    if shutil.which("pgcopydb") is None:
        raise SystemExit("pgcopydb is missing: WITH_BENCH=1 scripts/ensure-system.sh installs it")
    times: dict[str, list[float]] = {"cutover": [], "pg_dump": [], "pgcopydb": []}
    with fresh_lab("cutover-copy-") as (work, lab):
        for i in range(1, args.runs + 1):
            db = f"bench_{i}"
            with psycopg.connect(uri(lab, "source", "postgres"), autocommit=True) as conn:
                conn.execute(f"CREATE DATABASE {db}")
            with psycopg.connect(uri(lab, "target", "postgres"), autocommit=True) as conn:
                for suffix in ("dump", "pgcopydb"):
                    conn.execute(f"CREATE DATABASE {db}_{suffix}")
            print(f"run {i}: pgbench -i -s {args.scale} ...", flush=True)
            run(
                [
                    str(tools.bindir() / "pgbench"),
                    "-i",
                    "-q",
                    "-s",
                    str(args.scale),
                    uri(lab, "source", db),
                ]
            )
            with psycopg.connect(uri(lab, "source", db), autocommit=True) as conn:
                size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]  # type: ignore[index]
                conn.execute("VACUUM ANALYZE")
                conn.execute("CHECKPOINT")

            # Each run in another order, so none is always the one after pgbench.
            order = ["cutover", "pg_dump", "pgcopydb"]
            for way in order[i - 1 :] + order[: i - 1]:
                # No way starts while the servers or the OS still write back the one before.
                for side in ("source", "target"):
                    with psycopg.connect(uri(lab, side, "postgres"), autocommit=True) as conn:
                        conn.execute("CHECKPOINT")
                os.sync()
                if way == "cutover":
                    ours, steps = cutover_copy(lab, work, db, args.jobs)
                    times["cutover"].append(ours)
                    shown = ", ".join(f"{k} {v:.1f} s" for k, v in steps.items())
                    print(f"  cutover prepare + start --wait: {ours:.1f} s ({shown})", flush=True)
                elif way == "pg_dump":
                    times["pg_dump"].append(dump_restore(lab, work, db, args.jobs))
                    print(f"  pg_dump | pg_restore: {times['pg_dump'][-1]:.1f} s", flush=True)
                else:
                    times["pgcopydb"].append(pgcopydb(lab, work, db, args.jobs))
                    print(f"  pgcopydb clone: {times['pgcopydb'][-1]:.1f} s", flush=True)

            reference = counts(lab, db)
            for other in (f"{db}_dump", f"{db}_pgcopydb"):
                assert counts(lab, other) == reference, f"{other} differs"
                assert indexes(lab, other) == indexes(lab, db), f"{other}: other indexes"
    median = {way: statistics.median(values) for way, values in times.items()}
    fastest = min(median["pg_dump"], median["pgcopydb"])
    print()
    print(f"database: pgbench scale {args.scale}, {size / 1024**3:.2f} GB; rows and indexes equal")
    print(f"median of {args.runs} runs, {args.jobs} jobs each:")
    for way, label in (
        ("cutover", "cutover prepare + start --wait"),
        ("pg_dump", f"pg_dump -Fd -j{args.jobs} | pg_restore -j{args.jobs}"),
        ("pgcopydb", f"pgcopydb clone ({args.jobs} + {args.jobs} jobs)"),
    ):
        runs = ", ".join(f"{t:.1f}" for t in times[way])
        ratio = "" if way == "cutover" else f"  ratio {median[way] / median['cutover']:.2f}x"
        print(f"  {label:<36} {median[way]:6.1f} s  (runs: {runs}){ratio}")
    print(f"cutover takes {median['cutover'] / fastest:.2f}x the time of the fastest peer")


if __name__ == "__main__":
    main()
