"""PgBouncer's admin console: PAUSE, RESUME, RELOAD and what it shows of its pools.

The console is the `pgbouncer` database of a PgBouncer, reached as one of its
`admin_users`; it takes its own commands only, over the simple protocol, on an
autocommit connection, and none of them takes a parameter: database names are
quoted as identifiers.
"""

import threading
from contextlib import suppress
from dataclasses import dataclass

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from cutover.errors import ConnectionFailed, CutoverError
from cutover.log import redact
from cutover.plan import PgBouncer, resolve_secret

Console = psycopg.Connection[dict[str, object]]


@dataclass(frozen=True)
class PoolDatabase:
    """One entry of SHOW DATABASES: where a PgBouncer database points, and whether paused."""

    name: str
    host: str | None
    port: int | None
    database: str | None
    paused: bool
    connections: int  # its server connections now (none once a PAUSE is answered)


@dataclass(frozen=True)
class Client:
    """A client of a database that holds a server connection (in a transaction, or a session)."""

    user: str
    database: str
    address: str
    port: int
    application: str
    since: str

    def describe(self) -> str:
        """`user app from 10.0.0.7:52144 ('billing', connected since ...)`."""
        app = f"'{self.application}', " if self.application else ""
        return (
            f"user {self.user} from {self.address}:{self.port} ({app}connected since {self.since})"
        )


def console(bouncer: PgBouncer) -> Console:
    """An autocommit connection to the admin console."""
    password = (
        resolve_secret(bouncer.password, where="pgbouncer.password") if bouncer.password else None
    )
    try:
        return psycopg.connect(
            host=bouncer.host,
            port=bouncer.port,
            user=bouncer.user,
            password=password,
            dbname="pgbouncer",
            connect_timeout=max(1, int(bouncer.connect_timeout)),
            autocommit=True,
            row_factory=dict_row,
        )
    except psycopg.OperationalError as exc:
        reason = redact(str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc))
        raise ConnectionFailed(
            f"cannot reach the admin console of {bouncer.describe()}: {reason}",
            hint="check the host, port, user (one of its admin_users) and password reference "
            "in the plan, and that it listens there",
        ) from None


def command(conn: Console, verb: str, database: str | None = None) -> str:
    """The text of one console command: `PAUSE "app"`, `RELOAD`."""
    if database is None:
        return verb
    return sql.SQL("{} {}").format(sql.SQL(verb), sql.Identifier(database)).as_string(conn)


def run(conn: Console, verb: str, database: str | None = None) -> None:
    """Run one console command (PAUSE blocks until the database's servers are released)."""
    conn.execute(command(conn, verb, database))


def databases(conn: Console) -> dict[str, PoolDatabase]:
    """SHOW DATABASES, by name."""
    rows = conn.execute("SHOW DATABASES").fetchall()
    return {
        str(r["name"]): PoolDatabase(
            name=str(r["name"]),
            host=None if r.get("host") is None else str(r["host"]),
            port=None if r.get("port") is None else int(str(r["port"])),
            database=None if r.get("database") is None else str(r["database"]),
            paused=bool(int(str(r.get("paused") or 0))),
            connections=int(str(r.get("current_connections") or 0)),
        )
        for r in rows
    }


def shown(bouncer: PgBouncer) -> dict[str, PoolDatabase]:
    """SHOW DATABASES of one PgBouncer, by name, on a console connection of its own."""
    with console(bouncer) as conn:
        return databases(conn)


def busy_clients(bouncer: PgBouncer, database: str) -> list[Client]:
    """The clients of `database` that hold a server connection: what a PAUSE waits for.

    None when the console cannot tell (this is said in an error message already).
    """
    try:
        with console(bouncer) as conn:
            servers = conn.execute("SHOW SERVERS").fetchall()
            clients = conn.execute("SHOW CLIENTS").fetchall()
    except (CutoverError, psycopg.Error):
        return []
    linked = {str(s["link"]) for s in servers if s["database"] == database and s["link"]}
    return [
        Client(
            user=str(c["user"]),
            database=str(c["database"]),
            address=str(c["addr"]),
            port=int(str(c["port"])),
            application=str(c.get("application_name") or ""),
            since=str(c["connect_time"]),
        )
        for c in clients
        if c["database"] == database and str(c["ptr"]) in linked
    ]


class Pause:
    """One `PAUSE db` sent to one PgBouncer, answered or not yet."""

    def __init__(self, bouncer: PgBouncer, database: str) -> None:
        self.bouncer = bouncer
        self.database = database
        self.conn = console(bouncer)
        self.error: str | None = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._send, name="pgbouncer-pause", daemon=True)
        self._thread.start()

    def _send(self) -> None:
        try:
            run(self.conn, "PAUSE", self.database)
        except psycopg.Error as exc:
            self.error = str(exc).strip() or repr(exc)
        finally:
            self.done.set()

    def abandon(self) -> None:
        """Stop waiting for the answer (the database stays paused until RESUME)."""
        if not self.done.is_set():
            with suppress(psycopg.Error):
                self.conn.cancel()
        with suppress(psycopg.Error):
            self.conn.close()
        self._thread.join(timeout=5)
