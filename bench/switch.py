"""Write pause of `cutover switch` under load, next to the offline way, in one run.

For each run: a fresh database of `--tables` tables x `--rows` rows on the lab's
source, an application writing `--rate` writes/s across all tables, then
`cutover prepare`, `start --wait` and `switch` through the real command line.
The pause is the one the switch records (first writer stopped -> last writer
started); its own share is fence -> promote. The offline way on the same kind
of database: stop the writers, `pg_dump -Fc | pg_restore` to the target, repoint,
start the writers; its pause is the whole of that.

    .venv/bin/python bench/switch.py --runs 5
"""

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import yaml

from cutover import load
from cutover.lab import Lab, free_port
from cutover.pg import load as load_sql
from cutover.pg import tools
from cutover.pg.connect import Connection
from cutover.pg.connect import connect as cutover_connect
from cutover.plan import dump

ROLE = "bench_writer"


def connect(lab: Lab, side: str, db: str = "postgres") -> Connection:
    return cutover_connect(lab.server(side), db, label=side)


def make_database(lab: Lab, db: str, *, tables: int, rows: int, password: str) -> None:
    with connect(lab, "source") as conn:
        # The previous run's switch fenced the (cluster-wide) role: each run starts unfenced.
        conn.execute(f"ALTER ROLE {ROLE} LOGIN")
        conn.execute(f"ALTER ROLE {ROLE} RESET ALL")
        conn.execute(f'CREATE DATABASE "{db}"')
    with connect(lab, "source", db) as conn:
        load_sql.create_schema(conn, tables=tables, writer=ROLE)  # type: ignore[arg-type]
        for table in load_sql.table_names(tables):
            conn.execute(f"INSERT INTO {table} (v) SELECT g FROM generate_series(1, {rows}) g")
    del password


def app_database(
    lab: Lab, work_dir: Path, args: argparse.Namespace, password: str, prefix: str
) -> tuple[str, Path]:
    """A fresh database on the source and the env file its application reads."""
    db = f"{prefix}_{uuid.uuid4().hex[:6]}"
    make_database(lab, db, tables=args.tables, rows=args.rows, password=password)
    env = work_dir / f"{db}.env"
    env.write_text(
        f"DATABASE_URL=postgresql://{ROLE}:{password}@127.0.0.1:{lab.server('source').port}/{db}\n"
    )
    return db, env


def start_load(
    env: Path, tables: int, rate: float, log: Path
) -> tuple[load.Load, threading.Thread, int]:
    port = free_port()
    work = load.Load(
        env_file=env,
        keys=("DATABASE_URL",),
        tables=load_sql.table_names(tables),
        log=load.WriteLog(log.open("a")),
        workers=6,
        rate=rate,
    )
    thread = threading.Thread(target=work.run, kwargs={"port": port, "duration": None})
    thread.start()
    return work, thread, port


def cutover(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "cutover", *args], capture_output=True, text=True, check=False
    )
    if result.returncode != 0:
        raise SystemExit(f"cutover {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def one_switch(
    lab: Lab, work_dir: Path, args: argparse.Namespace, password: str, run: int
) -> dict[str, float]:
    db, env = app_database(lab, work_dir, args, password, f"bench_{run}")
    work, thread, port = start_load(env, args.tables, args.rate, work_dir / f"{db}.jsonl")
    control = f"http://127.0.0.1:{port}"
    plan = yaml.safe_load(dump(lab.plan([db], move=f"bench{run}_{uuid.uuid4().hex[:4]}")))
    plan.update(
        engine=args.engine,
        state_dir=str(work_dir / f"{db}.state"),
        writers=[
            {
                "name": "app",
                "http": {
                    "stop": f"{control}/pause",
                    "start": f"{control}/resume",
                    "status": f"{control}/drained",
                },
            }
        ],
        repoint=[{"name": "env", "file": {"path": str(env), "key": "DATABASE_URL"}}],
        fence={"roles": [ROLE]},
        thresholds={"lag_window": "1s"},
    )
    plan_path = work_dir / f"{db}.yaml"
    plan_path.write_text(yaml.safe_dump(plan))
    try:
        cutover("prepare", "-p", str(plan_path))
        cutover("start", "-p", str(plan_path), "--wait")
        acked_before, t0 = work.log.acked, time.monotonic()
        time.sleep(3)
        rate = (work.log.acked - acked_before) / (time.monotonic() - t0)
        cutover("switch", "-p", str(plan_path), "--yes")
        time.sleep(1)
    finally:
        work.stop.set()
        thread.join()
    ledger = json.loads(next(Path(plan["state_dir"]).glob("*.ledger.json")).read_text())
    steps = ledger["steps"]

    def seconds(a: str, b: str) -> float:
        from datetime import datetime

        return (datetime.fromisoformat(b) - datetime.fromisoformat(a)).total_seconds()

    return {
        "pause": seconds(
            steps["all/switch.stop_writers"]["started_at"],
            steps["all/switch.start_writers"]["ended_at"],
        ),
        "own": seconds(
            steps["all/switch.fence_source"]["started_at"], steps["all/switch.promote"]["ended_at"]
        ),
        "rate": rate,
    }


def offline(lab: Lab, work_dir: Path, args: argparse.Namespace, password: str) -> float:
    db, env = app_database(lab, work_dir, args, password, "bench_offline")
    work, thread, _ = start_load(env, args.tables, args.rate, work_dir / f"{db}.jsonl")
    time.sleep(2)
    source_env = tools.client_env(lab.server("source"), db, label="source")
    target_env = tools.client_env(lab.server("target"), "postgres", label="target")
    bindir = tools.bindir()
    try:
        started = time.monotonic()
        work.gate.pause()
        while not work.gate.drained():
            time.sleep(0.005)
        with connect(lab, "target") as conn:
            conn.execute(f'CREATE DATABASE "{db}"')
        target_env["PGDATABASE"] = db
        dumper = subprocess.Popen(
            [str(bindir / "pg_dump"), "-Fc"], stdout=subprocess.PIPE, env=source_env
        )
        subprocess.run(
            [str(bindir / "pg_restore"), "-d", db], stdin=dumper.stdout, env=target_env, check=True
        )
        assert dumper.wait() == 0
        env.write_text(
            f"DATABASE_URL=postgresql://{ROLE}:{password}@127.0.0.1:{lab.server('target').port}/{db}\n"
        )
        work.gate.resume()
        pause = time.monotonic() - started
    finally:
        work.stop.set()
        thread.join()
    return pause


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--tables", type=int, default=20)
    parser.add_argument("--rows", type=int, default=20000, help="rows per table")
    parser.add_argument("--rate", type=float, default=300, help="writes per second")
    parser.add_argument("--engine", default="native")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cutover-bench-") as tmp:
        work_dir = Path(tmp)
        lab = Lab(work_dir / "lab")
        lab.up(sample=False)
        password = uuid.uuid4().hex
        try:
            for side in ("source", "target"):
                with connect(lab, side) as conn:
                    load_sql.ensure_login_role(conn, ROLE, password)  # type: ignore[arg-type]
            runs = []
            for run in range(args.runs):
                result = one_switch(lab, work_dir, args, password, run)
                runs.append(result)
                print(
                    f"switch {run + 1}: pause {result['pause'] * 1000:.0f} ms, fence to promote "
                    f"{result['own'] * 1000:.0f} ms, load {result['rate']:.0f} writes/s",
                    flush=True,
                )
            offline_pause = offline(lab, work_dir, args, password)
        finally:
            lab.down(purge=True)
    pause = statistics.median(r["pause"] for r in runs)
    own = statistics.median(r["own"] for r in runs)
    rate = statistics.median(r["rate"] for r in runs)
    print()
    print(f"database: {args.tables} tables x {args.rows} rows, load {rate:.0f} writes/s (median)")
    print(
        f"cutover switch ({args.engine}), median of {args.runs}: pause {pause * 1000:.0f} ms, "
        f"fence to promote {own * 1000:.0f} ms"
    )
    print(f"offline (stop, pg_dump -Fc | pg_restore, start): pause {offline_pause * 1000:.0f} ms")
    print(f"ratio offline / cutover: {offline_pause / pause:.1f}x")


if __name__ == "__main__":
    main()
