"""The durable record of a move: every step's state and an audit trail of events.

`Journal` is what the runner writes through; a `Store` (a file by default, a
Kubernetes ConfigMap in a cluster) only reads, writes and locks one document.
The ledger never holds a secret: error texts are redacted before they arrive.
"""

from cutover.ledger.base import Event, Journal, Pause, StepRecord, Store
from cutover.ledger.file import FileStore
from cutover.plan import Plan


def journal_for(plan: Plan) -> Journal:
    """The move's journal in its state directory."""
    return Journal(FileStore(plan.state_dir, plan.move), move=plan.move)


__all__ = ["Event", "FileStore", "Journal", "Pause", "StepRecord", "Store", "journal_for"]
