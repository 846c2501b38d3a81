"""A local PgBouncer for the lab and the tests: its folder, its configuration, its process.

`cutover lab up --pgbouncer` puts one between the lab's write load and its
servers, where an application's pool stands; the tests start theirs the same
way. It is the machine's `pgbouncer`, run in the background with a pid file
and a log in its folder, in transaction pooling. Like the lab's servers, as
root it runs as the `postgres` user, who then owns its folder and files. Its
users log in with the passwords of its auth_file (auth_type plain: a lab's
loopback only); the user `admin` reaches its console with a password kept in
`admin.pw`, which the plan names by reference.
"""

import os
import pwd
import secrets
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cutover.errors import PreconditionFailed
from cutover.plan import PgBouncer, Server

ADMIN_USER = "admin"
START_SECONDS = 20.0
STOP_SECONDS = 10.0
_POLL_SECONDS = 0.05


def entry(server: Server, database: str, options: str = "") -> str:
    """The value of a [databases] entry: `database` on `server`, and more options if given."""
    quoted = "'" + database.replace("\\", "\\\\").replace("'", "\\'") + "'"
    return f"host={server.host} port={server.port} dbname={quoted} {options}".rstrip()


@dataclass(frozen=True)
class Bouncer:
    """One local PgBouncer: its folder and the port it listens on."""

    folder: Path
    port: int

    @property
    def config(self) -> Path:
        """Its pgbouncer.ini: what a pgbouncer repoint rewrites."""
        return self.folder / "pgbouncer.ini"

    @property
    def pid_file(self) -> Path:
        return self.folder / "pgbouncer.pid"

    @property
    def log_file(self) -> Path:
        return self.folder / "pgbouncer.log"

    @property
    def password_file(self) -> Path:
        """The admin user's password."""
        return self.folder / "admin.pw"

    def spec(self) -> PgBouncer:
        """The plan's entry for it: its console, the admin password by reference, its file."""
        return PgBouncer(
            host="127.0.0.1",
            port=self.port,
            user=ADMIN_USER,
            password=f"file:{self.password_file}",
            config=self.config,
        )

    def configure(
        self, databases: Mapping[str, str], users: Mapping[str, str], *, run_as: str | None
    ) -> None:
        """Write its configuration: `databases` (entry name -> value), `users` (name -> password).

        The entries are written one per line, each after a comment naming it, so
        that a repoint changes one line only. As root, its files belong to `run_as`.
        """
        self.folder.mkdir(parents=True, exist_ok=True)
        self.folder.chmod(0o700)
        lines = [f"; {name}\n{name} = {value}\n" for name, value in databases.items()]
        self.config.write_text(
            "; the application's pool\n[databases]\n"
            + "".join(lines)
            + f"""
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = plain
auth_file = {self.folder / "userlist.txt"}
admin_users = {ADMIN_USER}
pool_mode = transaction
ignore_startup_parameters = extra_float_digits
logfile = {self.log_file}
pidfile = {self.pid_file}
log_connections = 0
log_disconnections = 0
"""
        )
        if not self.password_file.exists():
            self.password_file.touch(mode=0o600)
            self.password_file.write_text(secrets.token_urlsafe(18) + "\n")
        admin = self.password_file.read_text().strip()
        userlist = self.folder / "userlist.txt"
        userlist.touch(mode=0o600)
        # auth_file quotes a name or password with "", a quote inside doubled.
        userlist.write_text(
            "".join(
                f'"{_doubled(name)}" "{_doubled(password)}"\n'
                for name, password in {ADMIN_USER: admin, **users}.items()
            )
        )
        for path in (self.folder, self.config, self.password_file, userlist):
            path.chmod(0o700 if path.is_dir() else 0o600)
            _chown(path, run_as)

    def is_running(self) -> bool:
        """Whether the process of its pid file is alive, and is this PgBouncer."""
        return self._pid() is not None

    def start(self, *, run_as: str | None) -> None:
        """Start it in the background; return once it accepts connections."""
        if self.is_running():
            return
        as_user = ["-u", run_as] if run_as is not None and os.geteuid() == 0 else []
        result = subprocess.run(
            ["pgbouncer", "-d", *as_user, str(self.config)],
            capture_output=True,
            text=True,
            check=False,
            cwd="/",
        )
        deadline = time.monotonic() + START_SECONDS
        while not _listens(self.port):
            if result.returncode != 0 or time.monotonic() > deadline:
                said = (result.stderr or result.stdout).strip() or _tail(self.log_file)
                raise PreconditionFailed(
                    f"PgBouncer did not start on 127.0.0.1:{self.port}: {said}",
                    hint=f"see {self.log_file}; PgBouncer comes from the machine's packages "
                    "(scripts/ensure-system.sh installs it)",
                )
            time.sleep(_POLL_SECONDS)

    def stop(self) -> None:
        """End it (SIGTERM: at once, its clients disconnected) and wait until it is gone."""
        pid = self._pid()
        if pid is None:
            return
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        # The process itself, not its pid file: PgBouncer removes that before it exits.
        deadline = time.monotonic() + STOP_SECONDS
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(_POLL_SECONDS)

    def _pid(self) -> int | None:
        """The pid of its pid file, if that process runs this PgBouncer's configuration.

        A pid file left by a PgBouncer that did not stop (the machine restarted)
        may name another process by now: that one is neither asked nor ended.
        """
        try:
            pid = int(self.pid_file.read_text().strip())
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (FileNotFoundError, ProcessLookupError, ValueError):
            return None
        return pid if str(self.config).encode() in command.split(b"\0") else None


def alive(pid: int) -> bool:
    """Whether process `pid` still runs (one that exited and awaits its parent does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")  # zombie, dead


def _doubled(value: str) -> str:
    return value.replace('"', '""')


def _listens(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return False
    return True


def _chown(path: Path, user: str | None) -> None:
    if user is not None and os.geteuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(path, entry.pw_uid, entry.pw_gid)


def _tail(path: Path, lines: int = 3) -> str:
    try:
        return " / ".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "no log"
