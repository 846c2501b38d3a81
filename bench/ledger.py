"""What the ledger costs a move of many databases: `prepare` and `start` recorded for each.

Every database of a move runs 13 steps through `prepare` and `start`; each step
is written to the ledger twice (started, then finished, neither waiting for the
disk, as those phases write them). The ledger is one document, written whole
at each record. Printed: the seconds spent writing it for the whole move, the
document's size, and one record's cost at the end, next to the same records
written the way the ledger wrote them before 2026-11-28 (every record converted
to JSON again at each write), in one run.

    .venv/bin/python bench/ledger.py --databases 100 200
"""

import argparse
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from cutover.ledger import FileStore, Journal
from cutover.ledger.base import dumps
from cutover.steps import Outcome

# As many steps as `prepare` (8) and `start` (5) have, with names of their length.
STEPS = [f"prepare.step_of_prepare_{i}" for i in range(8)] + [
    f"start.step_of_start_{i}" for i in range(5)
]


class Converting(Journal):
    """The ledger as it was: the whole document converted to JSON at each write."""

    def _text(self) -> str:
        document = {
            "format": 1,
            "move": "m",
            "id": self.id,
            "steps": {k: asdict(r) for k, r in self.steps().items()},
            "events": [asdict(e) for e in self.events()],
        }
        return dumps(document)


def record_move(journal: type[Journal], databases: int, work: Path) -> tuple[float, float, int]:
    """Seconds for the whole move, seconds of the last database's records, bytes."""
    store = FileStore(work, "m")
    ledger = journal(store, move="m")
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
    json.loads(store.path.read_text())  # whole and readable
    return ended - began, (ended - last) / len(STEPS), store.path.stat().st_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", type=int, nargs="+", default=[100, 200])
    args = parser.parse_args()
    print(f"{'databases':>9} {'way':<22} {'move':>9} {'a record':>10} {'document':>9}")
    for databases in args.databases:
        for label, journal in (("cutover", Journal), ("converting each write", Converting)):
            with tempfile.TemporaryDirectory() as tmp:
                seconds, record, size = record_move(journal, databases, Path(tmp))
            print(
                f"{databases:>9} {label:<22} {seconds:>8.1f}s {record * 1000:>8.2f}ms "
                f"{size / 1e6:>7.1f}MB",
                flush=True,
            )


if __name__ == "__main__":
    main()
