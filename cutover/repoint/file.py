"""Repoint a key of an env file (KEY=value lines), rewriting the file atomically.

Without a value in the plan, the key's current connection string keeps its
user, password, database and options, and only its host and port change to
the target's, so the applications' own credentials never pass through the plan.
"""

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from cutover.errors import PreconditionFailed
from cutover.log import redact
from cutover.plan import FileRepoint as FileSpec
from cutover.plan import Server
from cutover.steps import Change

_KEYWORD = re.compile(r"\b(host|port)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def retarget(dsn: str, host: str, port: int) -> str:
    """The same connection string with another host and port (URL or keyword form)."""
    if "://" in dsn:
        parts = urlsplit(dsn)
        userinfo = parts.netloc.rpartition("@")[0]
        netloc = (userinfo + "@" if userinfo else "") + f"{host}:{port}"
        return urlunsplit(parts._replace(netloc=netloc))
    replaced = _KEYWORD.sub(lambda m: f"{m.group(1)}={host if m.group(1) == 'host' else port}", dsn)
    for key, value in (("host", host), ("port", str(port))):
        if not re.search(rf"\b{key}\s*=", replaced):
            replaced += f" {key}={value}"
    return replaced.strip()


def unwritable(path: Path, *, who: str) -> list[str]:
    """`path` cannot be replaced by a file written beside it (the folder must take one)."""
    if os.access(path, os.W_OK) and os.access(path.parent, os.W_OK | os.X_OK):
        return []
    return [f"{who}: cannot write {path} and a file beside it in its folder (it is replaced whole)"]


class FileRepoint:
    """One key of an env file."""

    def __init__(self, name: str, spec: FileSpec) -> None:
        self.name = name
        self._spec = spec

    def _lines(self) -> list[str]:
        try:
            return self._spec.path.read_text().splitlines()
        except OSError as exc:
            raise PreconditionFailed(
                f"repoint {self.name}: cannot read {self._spec.path}: {exc.strerror}",
                hint="check repoint[].file.path in the plan",
            ) from None

    def _current(self, lines: list[str]) -> str | None:
        prefix = f"{self._spec.key}="
        values = [line[len(prefix) :] for line in lines if line.startswith(prefix)]
        return values[-1].strip().strip("'\"") if values else None

    def _wanted(self, server: Server, current: str | None) -> str:
        if self._spec.value is not None:
            return self._spec.value
        if current is None:
            raise PreconditionFailed(
                f"repoint {self.name}: {self._spec.path} has no {self._spec.key} to retarget",
                hint="give repoint[].file.value in the plan",
            )
        return retarget(current, server.peer_host, server.port)

    def problems(self, target: Server) -> list[str]:
        """The file is read, its key retargeted and the file replaced, as the switch will."""
        try:
            self._wanted(target, self._current(self._lines()))
        except PreconditionFailed as exc:
            return [exc.message]
        return unwritable(self._spec.path, who=f"repoint {self.name}")

    def points_to(self, server: Server) -> bool:
        """Whether the key already holds the target's address."""
        current = self._current(self._lines())
        return current is not None and current == self._wanted(server, current)

    def point_to(self, server: Server, *, dry_run: bool) -> Sequence[Change]:
        """Write the key's new value; every other line stays as it was."""
        lines = self._lines()
        wanted = self._wanted(server, self._current(lines))
        change = Change(f"repoint {self.name}", redact(f"{self._spec.key}={wanted}"))
        if dry_run:
            return [change]
        prefix = f"{self._spec.key}="
        updated = [f"{prefix}{wanted}" if line.startswith(prefix) else line for line in lines]
        if f"{prefix}{wanted}" not in updated:
            updated.append(f"{prefix}{wanted}")
        path = self._spec.path
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write("\n".join(updated) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.chmod(tmp, path.stat().st_mode & 0o7777)
            os.replace(tmp, path)
        finally:
            Path(tmp).unlink(missing_ok=True)
        return [change]
