"""The durable record of a move: every step's state and an audit trail of events.

`Journal` is what the runner writes through; a `Store` (a file by default, a
Kubernetes ConfigMap in a cluster) reads, writes and locks one document, and keeps
a log of the writes between two of the document's beside it.
The ledger never holds a secret: error texts are redacted before they arrive.
"""

from collections.abc import Callable
from typing import Any

from cutover.ledger.base import Event, Journal, Pause, StepRecord, Store, dumps, now
from cutover.ledger.file import FileStore
from cutover.plan import Plan


def _configmap(plan: Plan, kind: str) -> Store:
    from cutover.ledger.configmap import ConfigMapStore  # the Kubernetes client, only here

    assert plan.ledger.configmap is not None
    return ConfigMapStore(plan.ledger.configmap, plan.ledger_move, kind=kind)


# Where a move's documents are kept: one entry per backend, each one module.
BACKENDS: dict[str, Callable[[Plan, str], Store]] = {
    "file": lambda plan, kind: FileStore(plan.state_dir, plan.ledger_move, kind=kind),
    "configmap": _configmap,
}


def store_for(plan: Plan, kind: str = "ledger", *, backend: str | None = None) -> Store:
    """The store of one of the move's documents (`ledger`, `verify`, `writers`): where the
    plan's `ledger` says, unless `backend` names another."""
    chosen = backend or ("configmap" if plan.ledger.configmap is not None else "file")
    return BACKENDS[chosen](plan, kind)


def journal_for(plan: Plan) -> Journal:
    """The move's journal."""
    return Journal(store_for(plan), move=plan.ledger_move)


def move_id(plan: Plan) -> str:
    """The move's identity, which marks what it makes on the servers (see Document.id)."""
    return journal_for(plan).id


def save_verification(plan: Plan, *, mode: str, mismatches: dict[str, int]) -> None:
    """Keep the last verification's differences per database, for the exporter.

    A document of its own, written atomically without the move's lock: a
    verification may run while another command holds it.
    """
    store_for(plan, "verify").write(dumps({"at": now(), "mode": mode, "mismatches": mismatches}))


class WriterRecords:
    """What each writer was before a switch (or rollback) stopped it, by writer name.

    A document of its own in the move's store (`<move>.writers.json` beside the ledger),
    written through at once: a writer records its state before it changes anything,
    while the runner records a step only after it, so a run killed in between still
    finds the counts from before the stop. It holds counts and names, never a secret.
    """

    def __init__(self, store: Store) -> None:
        self._store = store

    def get(self, writer: str) -> dict[str, Any] | None:
        """The writer's record, if one was kept."""
        data = self._store.read() or {}
        record = data.get("writers", {}).get(writer)
        return dict(record) if isinstance(record, dict) else None

    def put(self, writer: str, record: dict[str, Any]) -> None:
        """Keep the writer's record, replacing an earlier one."""
        data = self._store.read() or {"writers": {}}
        data.setdefault("writers", {})[writer] = {**record, "at": now()}
        self._store.write(dumps(data))


def writer_records(plan: Plan) -> WriterRecords:
    """The move's writer records (shared by the switch and the rollback of one move)."""
    return WriterRecords(store_for(plan, "writers"))


def last_verification(plan: Plan) -> dict[str, Any] | None:
    """What `save_verification` kept, if a verification ran."""
    return store_for(plan, "verify").read()


__all__ = [
    "Event",
    "FileStore",
    "Journal",
    "Pause",
    "StepRecord",
    "Store",
    "WriterRecords",
    "journal_for",
    "last_verification",
    "move_id",
    "save_verification",
    "store_for",
    "writer_records",
]
