"""What the ledger costs a move of many databases: `prepare`, `start` and a switch's records.

Every database of a move runs 13 steps through `prepare` and `start`; each step
is written to the ledger twice (started, then finished, neither waiting for the
disk, as those phases write them). Then a switch records 10 steps, each waiting
for the disk before its work. Printed: the seconds spent writing the ledger for
the whole of `prepare` and `start`, one record's cost at the end, one switch
record's cost (synced), the document's size and its last write (the command's
end), next to the same records written as the ledger wrote them before its
log (the whole document at each record), in one run.

    .venv/bin/python bench/ledger.py --databases 100 200 1200
"""

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from cutover.ledger import FileStore, Journal
from cutover.steps import Outcome

# As many steps as `prepare` (8) and `start` (5) have, with names of their length.
STEPS = [f"prepare.step_of_prepare_{i}" for i in range(8)] + [
    f"start.step_of_start_{i}" for i in range(5)
]
SWITCH = [f"all/switch.step_of_switch_{i}" for i in range(10)]


class Whole(FileStore):
    """The ledger as it was: the whole document written at each record."""

    def fold_at(self) -> int:
        return -1


def record_move(store_kind: type[FileStore], databases: int, work: Path) -> dict[str, float]:
    """Seconds for the whole move, for one of the last database's records, for a
    switch's synced record (median), for the command's last write; the bytes."""
    store = store_kind(work, "m")
    ledger = Journal(store, move="m")
    began = time.perf_counter()
    last = began
    for db in range(databases):
        last = time.perf_counter()
        scope = f"tenant_{db}"
        for step in STEPS:
            key = f"{scope}/{step}"
            ledger.started(key, phase=step.split(".")[0], scope=scope, durable=False)
            ledger.finished(key, outcome=Outcome.APPLIED, seconds=0.01, durable=False)
    ledger.flush(sync=False)
    ended = time.perf_counter()
    synced = []
    for key in SWITCH:
        at = time.perf_counter()
        ledger.started(key, phase="switch", scope="all")
        synced.append(time.perf_counter() - at)
        ledger.finished(key, outcome=Outcome.APPLIED, seconds=0.01, durable=False)
    at = time.perf_counter()
    ledger.close()
    closed = time.perf_counter() - at
    document = json.loads(store.path.read_text())  # whole and readable, the log folded in
    assert len(document["steps"]) == databases * len(STEPS) + len(SWITCH)
    return {
        "move": ended - began,
        "record": (ended - last) / len(STEPS),
        "switch": statistics.median(synced),
        "close": closed,
        "bytes": store.path.stat().st_size,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", type=int, nargs="+", default=[100, 200])
    args = parser.parse_args()
    print(
        f"{'databases':>9} {'way':<20} {'move':>9} {'a record':>10} {'switch rec':>10} "
        f"{'last write':>10} {'document':>9}"
    )
    for databases in args.databases:
        for label, store_kind in (("cutover", FileStore), ("whole at each write", Whole)):
            with tempfile.TemporaryDirectory() as tmp:
                r = record_move(store_kind, databases, Path(tmp))
            print(
                f"{databases:>9} {label:<20} {r['move']:>8.1f}s {r['record'] * 1000:>8.2f}ms "
                f"{r['switch'] * 1000:>8.1f}ms {r['close'] * 1000:>8.1f}ms "
                f"{r['bytes'] / 1e6:>7.1f}MB",
                flush=True,
            )


if __name__ == "__main__":
    main()
