"""The default ledger store: one JSON file per move in the state directory, a log beside it.

The document's writes are atomic: a temporary file in the same folder renamed
over the old one. Between them the ledger's records are appended to a log,
`<move>.ledger.jsonl` (an entry per write, a line each), which the next write of the document
folds in and removes; `read` applies it. A synced write also waits for the disk
(fsync the file, rename, fsync the folder; for an append, fsync the log, and the
document and folder the first time); one that is not survives the process being
killed but not the machine losing power, and the Journal syncs it before its
command ends. The lock is an flock on a sibling file, released by the kernel when
the holding process dies, so a killed controller never leaves a stale lock behind.
"""

import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cutover.errors import LedgerLocked, UsageError
from cutover.ledger.base import actor, now, replay


class FileStore:
    """A move's ledger as `<state_dir>/<move>.ledger.json` (another `kind`: another document)."""

    def __init__(self, state_dir: Path, move: str, *, kind: str = "ledger") -> None:
        self.path = state_dir / f"{move}.{kind}.json"
        self.log_path = state_dir / f"{move}.{kind}.jsonl"
        self._lock_path = state_dir / f"{move}.lock"
        # What a synced append must wait for besides the log: the document (written
        # here without waiting, or by another process) and a new log's name in the folder.
        self._document_on_disk = False
        self._log_named = False

    def describe(self) -> str:
        """The file's path."""
        return str(self.path)

    def read(self) -> dict[str, Any] | None:
        """The document with its log applied, or None before the first write."""
        try:
            # The log first: a write of the document in between folds in what was read.
            lines = _lines(self.log_path)
            data: dict[str, Any] = json.loads(self.path.read_text())
            return replay(data, lines, where=str(self.log_path)) if lines else data
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"the ledger {self.path} cannot be read: {exc}",
                hint="restore it from a backup, or move it aside to start the move's record anew",
            ) from None

    def write(self, text: str, *, sync: bool = True) -> None:
        """Replace the document with `text` (JSON) atomically; with `sync`, durably too."""
        self._ensure_dir()
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
                handle.flush()
                if sync:
                    os.fsync(handle.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.log_path.unlink(missing_ok=True)  # in the document now
        self._document_on_disk = sync
        if sync:
            _fsync(self.path.parent)

    def append(self, line: str, *, sync: bool) -> None:
        """Add an entry to the log; with `sync`, wait for the disk (see the module)."""
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as handle:
            if handle.tell() == 0:
                self._log_named = False  # a new log
            handle.write(line)
            handle.flush()
            if sync:
                os.fsync(handle.fileno())
        if sync:
            if not self._document_on_disk:
                _fsync(self.path)
            if not (self._document_on_disk and self._log_named):
                _fsync(self.path.parent)
            self._document_on_disk = self._log_named = True

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the move's lock, or fail at once naming who holds it."""
        self._ensure_dir()
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = self._lock_path.read_text().strip() or "another process"
                raise LedgerLocked(
                    f"this move is being run by {holder}",
                    hint="wait for it to finish; the lock is released when that process ends",
                ) from None
            os.ftruncate(fd, 0)
            os.write(fd, f"{actor()} since {now()}\n".encode())
            yield
        finally:
            os.close(fd)  # closing releases the flock

    def _ensure_dir(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as exc:
            raise UsageError(
                f"cannot create the state directory {self.path.parent}: {exc.strerror}",
                hint="set state_dir in the plan to a folder this user may write",
            ) from None


def _lines(path: Path) -> list[str]:
    """The lines of a log, none if there is no log."""
    try:
        return path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return []


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
