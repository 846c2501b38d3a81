"""Time to a fully copied and indexed target, cutover next to its peers, in one run.

A `pgbench -i -s 70` database (about 1 GB) on the lab's source, copied three ways
to the lab's target, each into its own database:

- cutover: `cutover prepare` then `cutover start --wait` (schema, keys, copy
  through a subscription, then the other indexes);
- pg_dump -Fd -j2 | pg_restore -j2;
- pgcopydb clone --table-jobs 2 --index-jobs 2 (Debian package pgcopydb).

    WITH_BENCH=1 scripts/ensure-system.sh     # installs pgcopydb
    .venv/bin/python bench/initial_copy.py --scale 70
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psycopg
import yaml
from psycopg.conninfo import make_conninfo

from cutover.lab import Lab
from cutover.pg import tools
from cutover.plan import dump, resolve_secret

TABLES = ("pgbench_accounts", "pgbench_branches", "pgbench_tellers", "pgbench_history")


def uri(lab: Lab, side: str, db: str) -> str:
    server = lab.server(side)
    assert server.password is not None
    return make_conninfo(
        host=server.host,
        port=server.port,
        user=server.user,
        password=resolve_secret(server.password, where="bench"),
        dbname=db,
    )


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


def index_count(lab: Lab, db: str) -> int:
    with psycopg.connect(uri(lab, "target", db)) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_indexes WHERE tablename LIKE 'pgbench%%'"
        ).fetchone()
        return int(row[0]) if row else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=70, help="pgbench scale (70 is about 1 GB)")
    args = parser.parse_args()
    if shutil.which("pgcopydb") is None:
        raise SystemExit("pgcopydb is missing: WITH_BENCH=1 scripts/ensure-system.sh installs it")
    bindir = tools.bindir()
    with tempfile.TemporaryDirectory(prefix="cutover-copy-") as tmp:
        work = Path(tmp)
        lab = Lab(work / "lab")
        lab.up(sample=False)
        try:
            with psycopg.connect(uri(lab, "source", "postgres"), autocommit=True) as conn:
                conn.execute("CREATE DATABASE bench")
                for db in ("bench_dump", "bench_pgcopydb"):
                    psycopg.connect(uri(lab, "target", "postgres"), autocommit=True).execute(
                        f"CREATE DATABASE {db}"
                    )
            print(f"pgbench -i -s {args.scale} ...", flush=True)
            run(
                [
                    str(bindir / "pgbench"),
                    "-i",
                    "-q",
                    "-s",
                    str(args.scale),
                    uri(lab, "source", "bench"),
                ]
            )
            with psycopg.connect(uri(lab, "source", "bench"), autocommit=True) as conn:
                size = conn.execute("SELECT pg_database_size('bench')").fetchone()[0]  # type: ignore[index]
                conn.execute("VACUUM ANALYZE")
            print(f"source: {size / 1024**3:.2f} GB", flush=True)

            plan = yaml.safe_load(dump(lab.plan(["bench"], move="copybench")))
            plan["state_dir"] = str(work / "state")
            plan_path = work / "plan.yaml"
            plan_path.write_text(yaml.safe_dump(plan))
            cli = [sys.executable, "-m", "cutover"]
            ours = run([*cli, "prepare", "-p", str(plan_path)]) + run(
                [*cli, "start", "-p", str(plan_path), "--wait"]
            )
            print(f"cutover prepare + start --wait: {ours:.1f} s", flush=True)
            ledger = json.loads(next((work / "state").glob("*.ledger.json")).read_text())
            for key, record in ledger["steps"].items():
                if record["seconds"] and record["seconds"] > 0.5:
                    print(f"  {key}: {record['seconds']:.1f} s", flush=True)

            dump_dir = work / "dump"
            source_env = tools.client_env(lab.server("source"), "bench", label="source")
            target_env = tools.client_env(lab.server("target"), "bench_dump", label="target")
            dumped = run(
                [str(bindir / "pg_dump"), "-Fd", "-j2", "-f", str(dump_dir)], env=source_env
            )
            restored = run(
                [str(bindir / "pg_restore"), "-j2", "-d", "bench_dump", str(dump_dir)],
                env=target_env,
            )
            peer_dump = dumped + restored
            print(f"pg_dump -Fd -j2 + pg_restore -j2: {peer_dump:.1f} s", flush=True)

            peer_copydb = run(
                [
                    "pgcopydb",
                    "clone",
                    "--source",
                    uri(lab, "source", "bench"),
                    "--target",
                    uri(lab, "target", "bench_pgcopydb"),
                    "--table-jobs",
                    "2",
                    "--index-jobs",
                    "2",
                    "--dir",
                    str(work / "pgcopydb"),
                    "--no-owner",
                ],
                env={"PATH": f"{bindir}:/usr/bin:/bin", "HOME": str(work)},
            )
            print(f"pgcopydb clone: {peer_copydb:.1f} s", flush=True)

            reference = counts(lab, "bench")
            for db in ("bench_dump", "bench_pgcopydb"):
                assert counts(lab, db) == reference, f"{db} differs"
            assert index_count(lab, "bench") == index_count(lab, "bench_dump")
        finally:
            lab.down(purge=True)
    fastest = min(peer_dump, peer_copydb)
    print()
    print(f"database: pgbench scale {args.scale}, {size / 1024**3:.2f} GB, rows equal on all three")
    print(f"cutover (prepare + start --wait): {ours:.1f} s")
    print(f"pg_dump -Fd -j2 | pg_restore -j2: {peer_dump:.1f} s  (ratio {peer_dump / ours:.2f}x)")
    print(
        f"pgcopydb clone (2 + 2 jobs):      {peer_copydb:.1f} s  (ratio {peer_copydb / ours:.2f}x)"
    )
    print(f"cutover vs the fastest peer: {ours / fastest:.2f}x its time")


if __name__ == "__main__":
    main()
