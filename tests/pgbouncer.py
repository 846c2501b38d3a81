"""A real PgBouncer for a test: in front of one lab server, with an admin user of its own."""

import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cutover.lab import RUN_AS, free_port
from cutover.plan import PgBouncer, Server

ADMIN_PASSWORD = "admin-secret-1"


@dataclass
class Bouncer:
    """A running PgBouncer: its port and configuration file."""

    port: int
    config: Path

    def spec(self) -> PgBouncer:
        """The plan's entry for it (the admin password by reference)."""
        password = self.config.parent / "admin.pw"
        return PgBouncer(
            port=self.port, user="admin", password=f"file:{password}", config=self.config
        )


def _quoted(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@contextmanager
def running(
    server: Server, db: str, users: Mapping[str, str], *, entry: str = "app", force: str = ""
) -> Iterator[Bouncer]:
    """PgBouncer in transaction pooling; `[databases] entry` is `db` on `server`.

    `users` log in with their passwords (auth_type plain); `force` is a `user=...
    password=...` the entry logs into the server as, if given.
    """
    # It runs as the lab's user: its files in a folder that user reaches.
    folder = Path(tempfile.mkdtemp(prefix="cutover-pgbouncer-"))
    folder.chmod(0o777)
    port = free_port()
    config = folder / "pgbouncer.ini"
    config.write_text(
        f"""; the application's pool
[databases]
; {entry} is the move's database
{entry} = host={server.host} port={server.port} dbname={_quoted(db)} {force}
other = host=127.0.0.1 port=1 dbname=untouched

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {port}
unix_socket_dir =
auth_type = plain
auth_file = {folder}/userlist.txt
admin_users = admin
pool_mode = transaction
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
"""
    )
    users = {"admin": ADMIN_PASSWORD, **users}
    (folder / "userlist.txt").write_text("".join(f'"{u}" "{p}"\n' for u, p in users.items()))
    (folder / "admin.pw").write_text(ADMIN_PASSWORD + "\n")
    for path in folder.iterdir():
        path.chmod(0o666)
    as_user = ["-u", RUN_AS] if os.geteuid() == 0 else []
    process = subprocess.Popen(["pgbouncer", *as_user, str(config)])
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and process.poll() is None, "no pgbouncer"
                time.sleep(0.05)
        yield Bouncer(port, config)
    finally:
        process.terminate()
        process.wait(timeout=10)
        shutil.rmtree(folder, ignore_errors=True)
