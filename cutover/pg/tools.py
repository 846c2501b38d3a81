"""PostgreSQL's own programs (initdb, pg_ctl, pg_dump, pg_restore): where they are, how to run them.

A password reaches them through the environment of the child process only,
never its command line (which every user of the machine can read).
"""

import os
import shutil
import subprocess
from pathlib import Path

from cutover import process
from cutover.errors import PreconditionFailed, StepFailed
from cutover.log import redact
from cutover.pg.connect import conninfo
from cutover.plan import Server

MAJOR = 15


def bindir() -> Path:
    """Where PostgreSQL's programs are (CUTOVER_PG_BIN overrides)."""
    candidates = [os.environ.get("CUTOVER_PG_BIN", ""), f"/usr/lib/postgresql/{MAJOR}/bin"]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(str(Path(on_path).resolve().parent))
    for candidate in candidates:
        if candidate and (Path(candidate) / "pg_ctl").exists():
            return Path(candidate)
    raise PreconditionFailed(
        "PostgreSQL's programs (initdb, pg_ctl, pg_dump, pg_restore) were not found",
        hint=f"install them with `make demo` or `apt-get install postgresql-{MAJOR}`, "
        "or set CUTOVER_PG_BIN to their folder",
    )


def client_env(server: Server, dbname: str, *, label: str) -> dict[str, str]:
    """libpq environment variables for a child program; the password stays out of argv.

    A server given by instance is reached through a local relay (pg/cloudsql.py) whose far
    side is the connector's TLS: the child connects to it without TLS of its own.
    """
    params = conninfo(server, dbname, label=label)
    if server.instance is not None:
        from cutover.pg import cloudsql  # Google's connector loads only when it is used

        address = cloudsql.relay(server)
        params.pop("sslrootcert", None)
        params |= {"host": address.host, "port": address.port, "sslmode": "disable"}
        if server.iam_auth:
            params["user"] = cloudsql.iam_user(server.user)
    names = {
        "host": "PGHOST",
        "port": "PGPORT",
        "user": "PGUSER",
        "dbname": "PGDATABASE",
        "password": "PGPASSWORD",
        "sslmode": "PGSSLMODE",
        "sslrootcert": "PGSSLROOTCERT",
        "connect_timeout": "PGCONNECT_TIMEOUT",
        "application_name": "PGAPPNAME",
    }
    return {**os.environ, **{names[k]: str(v) for k, v in params.items() if k in names}}


def run(
    program: str, *args: str, env: dict[str, str] | None = None, what: str
) -> subprocess.CompletedProcess[str]:
    """Run one of PostgreSQL's programs; a failure raises with its last lines of output."""
    argv = [str(bindir() / program), *args]
    result = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        lines = (result.stderr or result.stdout).strip().splitlines()
        raise StepFailed(
            f"{what} failed: {redact(' / '.join(lines[-3:]) or str(result.returncode))}",
            hint=f"{program} exited with {result.returncode}; run again with -v for details",
        )
    return result


def run_command(argv: list[str], *, timeout: float, what: str) -> None:
    """Run an operator's command (a server restart, say); a failure raises with its output.

    Like the writers' commands, it runs in a process group of its own, ended whole
    when it outlasts `timeout`.
    """
    result = process.run(argv, timeout=timeout, what=what, hint="check the command in the plan")
    if result.returncode != 0:
        raise StepFailed(
            f"{what} exited {result.returncode}: {process.tail(result)}",
            hint="run the command by hand to see why",
        )
