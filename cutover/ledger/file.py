"""The default ledger store: one JSON file per move in the state directory, a log beside it.

The document is replaced atomically: a temporary file in the same folder renamed
over the old one. Between two such writes the ledger's writes are appended to a
log, `<move>.ledger.jsonl`, a line each, marked with the document's generation;
`read` applies the lines of the document's generation, and the document's next
write (a new generation) removes the log. A synced write waits for the disk
(fsync the file, rename, fsync the folder; an append fsyncs the log, and the
document and the folder too the first time); one that is not survives the process
being killed but not the machine losing power. The lock is an flock on a sibling
file, released by the kernel when the holding process dies, so a killed
controller never leaves a stale lock behind.
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

# The log is folded into the document once it holds more than the document and this:
# each byte is then written a few times in all, and a small move's records stay in the
# log until the command's end.
FOLD = 256 * 1024


class FileStore:
    """A move's ledger as `<state_dir>/<move>.ledger.json` and its log `<move>.ledger.jsonl`
    (another `kind`: another document)."""

    def __init__(self, state_dir: Path, move: str, *, kind: str = "ledger") -> None:
        self.path = state_dir / f"{move}.{kind}.json"
        self.log_path = state_dir / f"{move}.{kind}.jsonl"
        self._lock_path = state_dir / f"{move}.lock"
        # What a synced append must wait for besides the log: the document (written
        # here without waiting, or by another process) and a new log's name in the folder.
        self._document_on_disk = False
        self._log_named = False
        self.found_log = False  # see Store
        self._document_bytes = 0  # as last read or written

    def describe(self) -> str:
        """The file's path."""
        return str(self.path)

    def read(self) -> dict[str, Any] | None:
        """The document with its log applied, or None before the first write."""
        try:
            # The log first: a write of the document in between holds what was read.
            lines = _lines(self.log_path)
            self.found_log = bool(lines)
            text = self.path.read_text()
            self._document_bytes = len(text)
            data: dict[str, Any] = json.loads(text)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"the ledger {self.path} cannot be read: {exc}",
                hint="restore it from a backup, or move it aside to start the move's record anew",
            ) from None
        try:
            return replay(data, lines, where=str(self.log_path))
        except ValueError as exc:
            raise UsageError(
                f"the ledger's log cannot be read: {exc}",
                hint=f"move {self.log_path} aside to read the document alone: the records "
                "written since the document was last written whole are then lost",
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
        self._document_on_disk, self._document_bytes = sync, len(text)
        if sync:
            _fsync(self.path.parent)
        self.log_path.unlink(missing_ok=True)  # another generation now, held by the document

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
            self._settle()

    def sync(self) -> None:
        """Wait for the disk for the log, and for the document if it was not waited for."""
        if self.log_path.exists():
            _fsync(self.log_path)
        self._settle()

    def _settle(self) -> None:
        """The log was synced: the document and the folder (both names) too, if not yet."""
        if not self._document_on_disk:
            _fsync(self.path)
        if not (self._document_on_disk and self._log_named):
            _fsync(self.path.parent)
        self._document_on_disk = self._log_named = True

    def fold_at(self) -> int:
        """The log is written into the document once it outgrows it (and FOLD)."""
        return max(FOLD, self._document_bytes)

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


def _lines(path: Path) -> list[bytes]:
    """The lines of a log (the last one perhaps cut short), none if there is no log."""
    try:
        lines = path.read_bytes().split(b"\n")
    except FileNotFoundError:
        return []
    return lines[:-1] if lines[-1] == b"" else lines


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
