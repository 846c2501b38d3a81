"""Repoint PgBouncers: their [databases] entries rewritten to the target, then RELOAD.

Only the host and the port of each named entry change; its user, password,
database name and options stay, and no entry's text is ever shown (it may
hold a password). The file is replaced atomically with its mode and owner
kept, then `RELOAD` makes PgBouncer read it, and `SHOW DATABASES` is read back:
the repoint is done only when PgBouncer itself names the new address. Done
while the pools are paused (a pgbouncer writer), the queries held go to the
target on RESUME. Rollback points them back the same way.
"""

import os
import re
import tempfile
from collections.abc import Sequence
from pathlib import Path

from cutover.errors import CutoverError, PreconditionFailed, StepFailed
from cutover.pg import pgbouncer
from cutover.plan import PgBouncer, Server
from cutover.plan import PgBouncerRepoint as PgBouncerSpec
from cutover.repoint.file import retarget, unwritable
from cutover.steps import Change

_SECTION = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]\s*$")
_ENTRY = re.compile(r'^(\s*)("(?:[^"]|"")+"|[^=\s]+)(\s*=\s*)(.*?)(\s*)$')


def _name(raw: str) -> str:
    return raw[1:-1].replace('""', '"') if raw.startswith('"') else raw


def rewrite(text: str, databases: Sequence[str], host: str, port: int) -> tuple[str, list[str]]:
    """The configuration with each named [databases] entry's host and port replaced.

    Returns the new text and the names found; everything else is kept byte for byte.
    """
    wanted, found = set(databases), []
    section = ""
    lines = text.splitlines(keepends=True)
    for i, line in enumerate(lines):
        body = line.rstrip("\r\n")
        ending = line[len(body) :]
        header = _SECTION.match(body)
        if header:
            section = header.group(1).lower()
            continue
        if section != "databases" or body.lstrip().startswith((";", "#")):
            continue
        entry = _ENTRY.match(body)
        if entry is None or _name(entry.group(2)) not in wanted:
            continue
        lead, raw, equals, value, trail = entry.groups()
        lines[i] = f"{lead}{raw}{equals}{retarget(value, host, port)}{trail}{ending}"
        found.append(_name(raw))
    return "".join(lines), found


def _replace(path: Path, text: str) -> None:
    """Write `text` over `path` atomically, keeping its mode and owner."""
    status = path.stat()
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", delete=False
    ) as handle:
        handle.write(text)
        handle.flush()
        os.fchmod(handle.fileno(), status.st_mode & 0o7777)
        if os.geteuid() == 0:
            os.fchown(handle.fileno(), status.st_uid, status.st_gid)
        os.fsync(handle.fileno())
    os.replace(handle.name, path)


class PgBouncerRepoint:
    """The named [databases] entries of each PgBouncer of the plan."""

    def __init__(self, name: str, spec: PgBouncerSpec) -> None:
        self.name = name
        self._spec = spec

    def _config(self, bouncer: PgBouncer) -> Path:
        assert bouncer.config is not None  # the plan requires it for a repoint
        return bouncer.config

    def _read(self, path: Path) -> str:
        try:
            return path.read_text()
        except OSError as exc:
            raise PreconditionFailed(
                f"repoint {self.name}: cannot read {path}: {exc.strerror or exc}",
                hint="the controller must read and write the PgBouncer's configuration file",
            ) from None

    def _rewritten(self, path: Path, text: str, server: Server) -> str:
        """`text` with every entry of the plan at `server`; refused when one is missing."""
        new, found = rewrite(
            text, self._spec.databases, server.host or server.peer_host, server.port
        )
        missing = [db for db in self._spec.databases if db not in found]
        if missing:
            raise PreconditionFailed(
                f"repoint {self.name}: {path} has no [databases] entry " + ", ".join(missing),
                hint="name the entries of its [databases] section (an entry in a file it "
                "%include-s is not rewritten: point config at that file)",
            )
        return new

    def point_to(self, server: Server, *, dry_run: bool) -> Sequence[Change]:
        """Rewrite each PgBouncer's entries, RELOAD, and read the new address back."""
        changes: list[Change] = []
        for bouncer in self._spec.pgbouncers:
            path = self._config(bouncer)
            names = ", ".join(self._spec.databases)
            changes.append(
                Change(
                    f"repoint {self.name}",
                    f"{path}: [databases] {names} to {server.host}:{server.port}; "
                    f"RELOAD {bouncer.describe()}",
                )
            )
            if dry_run:
                continue
            text = self._read(path)
            new = self._rewritten(path, text, server)
            if new != text:
                _replace(path, new)
            with pgbouncer.console(bouncer) as conn:
                pgbouncer.run(conn, "RELOAD")
            if not self._names(bouncer, server):
                raise StepFailed(
                    f"repoint {self.name}: {bouncer.describe()} still names another address "
                    f"after RELOAD of {path}",
                    hint="check that config is the file this PgBouncer was started with",
                )
        return changes

    def problems(self, target: Server) -> list[str]:
        """Each PgBouncer's file has every entry and may be replaced; its console answers."""
        found: list[str] = []
        who = f"repoint {self.name}"
        for bouncer in self._spec.pgbouncers:
            path = self._config(bouncer)
            try:
                text = self._read(path)
            except PreconditionFailed as exc:
                found.append(exc.message)
                continue
            try:
                self._rewritten(path, text, target)
            except PreconditionFailed as exc:
                found.append(exc.message)
            found += unwritable(path, who=who)
            try:
                pgbouncer.shown(bouncer)
            except CutoverError as exc:
                found.append(f"{who}: {exc.message}")
        return found

    def points_to(self, server: Server) -> bool:
        """Each PgBouncer shows every entry at the server's host and port."""
        return all(self._names(b, server) for b in self._spec.pgbouncers)

    def _names(self, bouncer: PgBouncer, server: Server) -> bool:
        shown = pgbouncer.shown(bouncer)
        return all(
            db in shown and shown[db].host == server.host and shown[db].port == server.port
            for db in self._spec.databases
        )
