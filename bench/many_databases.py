"""The switch of a move of many databases (tenants on one server), next to a runbook's.

Each database holds a few tables with serial keys and a standalone sequence.
Each run, for every `--databases` count, on fresh databases per way:

- cutover: `prepare`, `start --wait`, `switch --yes` through the real command line,
  the native engine. Its pause is what the ledger records from the fence to the
  last step before the writers start (no writer is configured here, so stopping
  and starting them costs nothing); every step of it is printed;
- the runbook on the same kind of replication (set up by cutover): for each
  database, one after another as a script does, wait until the slot has
  confirmed the source's LSN, one `setval` per sequence, drop the subscription (and
  with it its slot).

    .venv/bin/python bench/many_databases.py --databases 10 30 --runs 2
"""

import argparse
import json
import statistics
import time
import uuid
from pathlib import Path

import yaml
from common import cutover, fresh_lab, seconds_between, settle
from psycopg import sql

from cutover.lab import Lab
from cutover.pg.connect import connect
from cutover.plan import dump

SCHEMA = """
CREATE TABLE accounts (id bigserial PRIMARY KEY, name text);
CREATE TABLE orders (id integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY, account bigint);
CREATE SEQUENCE tickets;
INSERT INTO accounts (name) SELECT 'a' || g FROM generate_series(1, 100) g;
INSERT INTO orders (account) SELECT 1 + g % 100 FROM generate_series(1, 200) g;
SELECT nextval('tickets') FROM generate_series(1, 10);
"""
# The steps between the fence and the writers' start: the pause, writers aside.
PAUSED = ("fence_source", "wait_for_barrier", "copy_sequences", "promote", "repoint")


def tenants(lab: Lab, count: int, tag: str) -> list[str]:
    """`count` fresh databases on the source, each with the schema and rows."""
    names = [f"{tag}_{i}" for i in range(count)]
    with connect(lab.server("source"), label="source") as conn:
        for db in names:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(db)))
    for db in names:
        with connect(lab.server("source"), db, label="source") as conn:
            conn.execute(SCHEMA)
    return names


def replicating(lab: Lab, work: Path, names: list[str], move: str) -> tuple[Path, dict[str, float]]:
    """A plan of these databases, prepared and streaming; its path, and what prepare and
    start took: their seconds and the most sessions they held on the source and target."""
    plan = yaml.safe_load(dump(lab.plan(names, move=move)))
    plan.update(state_dir=str(work / move), thresholds={"lag_window": "1s"})
    path = work / f"{move}.yaml"
    path.write_text(yaml.safe_dump(plan))
    with lab.cutover_sessions(every=0.01) as samples:
        began = time.monotonic()
        cutover("prepare", "-p", str(path))
        prepared = time.monotonic()
        cutover("start", "-p", str(path), "--wait")
        started = time.monotonic()
    return path, {
        "prepare": prepared - began,
        "start": started - prepared,
        **{f"sessions {side}": max(len(s[side]) for s in samples) for side in ("source", "target")},
    }


def with_cutover(lab: Lab, work: Path, count: int, tag: str) -> dict[str, float]:
    move = f"c{tag}"
    path, before = replicating(lab, work, tenants(lab, count, move), move)
    cutover("switch", "-p", str(path), "--yes")
    steps = json.loads((work / move / f"{move}.ledger.json").read_text())["steps"]
    paused = {name: steps[f"all/switch.{name}"] for name in PAUSED}
    result = {
        "pause": seconds_between(
            paused["fence_source"]["started_at"], paused["repoint"]["ended_at"]
        )
    }
    result.update({f"step {name}": record["seconds"] for name, record in paused.items()})
    return result | before


def by_hand(lab: Lab, work: Path, count: int, tag: str) -> dict[str, float]:
    """The runbook, database by database: wait for the LSN, setval, drop the subscription."""
    move = f"h{tag}"
    names = tenants(lab, count, move)
    replicating(lab, work, names, move)
    began = time.monotonic()
    for db in names:
        with (
            connect(lab.server("source"), db, label="source") as source,
            connect(lab.server("target"), db, label="target") as target,
        ):
            settle(source, poll=0.01)
            for row in source.execute(
                "SELECT format('%I.%I', schemaname, sequencename) AS name, last_value "
                "FROM pg_sequences WHERE last_value IS NOT NULL"
            ).fetchall():
                target.execute("SELECT setval(%s::regclass, %s)", (row["name"], row["last_value"]))
            row = target.execute(
                "SELECT subname FROM pg_subscription s JOIN pg_database d ON d.oid = s.subdbid "
                "WHERE d.datname = current_database()"
            ).fetchone()
            assert row is not None
            # Its slot on the source goes with it, as the runbook's one statement does.
            target.execute(sql.SQL("DROP SUBSCRIPTION {}").format(sql.Identifier(row["subname"])))
    return {"pause": time.monotonic() - began}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", type=int, nargs="+", default=[10, 30])
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    with fresh_lab("cutover-many-") as (work, lab):
        for count in args.databases:
            ours: list[dict[str, float]] = []
            theirs: list[float] = []
            for run in range(args.runs):
                tag = f"{count}_{run}_{uuid.uuid4().hex[:4]}"
                ours.append(with_cutover(lab, work, count, tag))
                theirs.append(by_hand(lab, work, count, tag)["pause"])
            pause = statistics.median(r["pause"] for r in ours)
            hand = statistics.median(theirs)
            steps = ", ".join(
                f"{name} {1000 * statistics.median(r[f'step {name}'] for r in ours):.0f}"
                for name in PAUSED
            )
            print(
                f"{count} databases: cutover fence to writers {1000 * pause:.0f} ms "
                f"({steps} ms), runbook {1000 * hand:.0f} ms: ratio {hand / pause:.2f}x "
                f"(medians of {args.runs})",
                flush=True,
            )

            med = {
                key: statistics.median(r[key] for r in ours)
                for key in ("prepare", "start", "sessions source", "sessions target")
            }
            print(
                f"  before it: prepare {med['prepare']:.1f} s, start --wait {med['start']:.1f} s; "
                f"the most sessions held at once: source {med['sessions source']:.0f}, "
                f"target {med['sessions target']:.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
