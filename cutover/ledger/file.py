"""The default ledger store: one JSON file per move in the state directory.

Writes are atomic: a temporary file in the same folder renamed over the old
one. A synced write also waits for the disk (fsync the file, rename, fsync the
folder); one that is not survives the process being killed but not the machine
losing power, and the Journal syncs it before its command ends. The lock is an flock on a sibling
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
from cutover.ledger.base import actor, now


class FileStore:
    """A move's ledger as `<state_dir>/<move>.ledger.json` (another `kind`: another document)."""

    def __init__(self, state_dir: Path, move: str, *, kind: str = "ledger") -> None:
        self.path = state_dir / f"{move}.{kind}.json"
        self._lock_path = state_dir / f"{move}.lock"

    def describe(self) -> str:
        """The file's path."""
        return str(self.path)

    def read(self) -> dict[str, Any] | None:
        """The document, or None before the first write."""
        try:
            data: dict[str, Any] = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"the ledger {self.path} cannot be read: {exc}",
                hint="restore it from a backup, or move it aside to start the move's record anew",
            ) from None
        return data

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
        if not sync:
            return
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)

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
