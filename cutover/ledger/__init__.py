"""The durable record of a move: every step's state and an audit trail of events.

`Journal` is what the runner writes through; a `Store` (a file by default, a
Kubernetes ConfigMap in a cluster) only reads, writes and locks one document.
The ledger never holds a secret: error texts are redacted before they arrive.
"""

from cutover.ledger.base import Event, Journal, StepRecord, Store
from cutover.ledger.file import FileStore

__all__ = ["Event", "FileStore", "Journal", "StepRecord", "Store"]
