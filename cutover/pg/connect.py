"""Opening connections: credentials resolved at the last moment, errors made plain.

Each connection knows its server's label ('source', 'target'), and a statement
that fails on it leaves the label, the database and the statement on the
error (see pg/errors.py), which is re-raised as it was.
"""

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Self, TypeVar, cast

import psycopg
from psycopg.abc import Params, Query, QueryNoTemplate
from psycopg.rows import Row, dict_row

from cutover.errors import ConnectionFailed
from cutover.log import redact, register_secret
from cutover.pg import errors
from cutover.plan import Server, resolve_secret

Connection = psycopg.Connection[dict[str, Any]]
DatabaseError = psycopg.Error  # what a query on a lost connection raises
T = TypeVar("T")
K = TypeVar("K")


class LabeledConnection(psycopg.Connection[dict[str, Any]]):
    """A connection that knows which server it is on, for the errors of its statements."""

    label = "server"


class LabeledCursor(psycopg.Cursor[Row]):
    """A cursor whose failing statement's error says where it ran and what it was."""

    def execute(
        self,
        query: Query,
        params: Params | None = None,
        *,
        prepare: bool | None = None,
        binary: bool | None = None,
    ) -> Self:
        """Execute `query`; an error carries the server's label and the statement."""
        try:
            # cutover sends no t-string templates: the overload without them applies.
            text = cast(QueryNoTemplate, query)
            return super().execute(text, params, prepare=prepare, binary=binary)
        except psycopg.Error as exc:
            conn = self.connection
            # A connection from the Cloud SQL connector is psycopg's own class, labelled after.
            label = str(getattr(conn, "label", LabeledConnection.label))
            errors.remember(exc, conn, query, label=label)
            raise


APPLICATION_NAME = "cutover"  # every session of the controller, and of its psql and pg_*


def conninfo(server: Server, dbname: str | None = None, *, label: str) -> dict[str, Any]:
    """libpq keywords for a server; the password is resolved here and registered for redaction."""
    params: dict[str, Any] = {
        "host": server.host,  # None for an instance: the Cloud SQL connector finds it
        "port": server.port,
        "user": server.user,
        "dbname": dbname or server.dbname,
        "sslmode": server.sslmode.value,
        "connect_timeout": max(1, int(server.connect_timeout)),
        "application_name": APPLICATION_NAME,
    }
    if server.sslrootcert:
        params["sslrootcert"] = server.sslrootcert
    if server.password:
        password = resolve_secret(server.password, where=f"{label}.password")
        register_secret(password)
        params["password"] = password
    return params


def connect(
    server: Server,
    dbname: str | None = None,
    *,
    label: str,
    autocommit: bool = True,
    replication: bool = False,
) -> Connection:
    """A connection to `dbname` (default: the server's maintenance database).

    With `replication` it is a logical replication connection, which takes the
    replication commands (CREATE_REPLICATION_SLOT) over the simple protocol.
    """
    params = conninfo(server, dbname, label=label)
    if replication:
        params["replication"] = "database"
    options: dict[str, Any] = {
        "autocommit": autocommit,
        "row_factory": dict_row,
        "cursor_factory": LabeledCursor,
    }
    try:
        if server.instance is None:
            conn: Connection = LabeledConnection.connect(**params, **options)
        else:
            from cutover.pg import cloudsql  # Google's connector loads only when it is used

            conn = cloudsql.connect(server, params, **options)
    except psycopg.OperationalError as exc:
        reason = redact(str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc))
        raise ConnectionFailed(
            f"cannot connect to {label} ({server.describe(dbname)}): {reason}",
            hint=f"check {label}.{'host/port' if server.instance is None else 'instance'}/user "
            "and the password reference in the plan, "
            "and that the server accepts connections from here (pg_hba.conf, firewall)",
        ) from None
    except Exception as exc:  # only the connector's path gets here
        # The connector's own failures: the Admin API refused, no address of ip_type,
        # the TLS handshake on port 3307 failed (aiohttp's and ssl's errors are these).
        reason = redact(str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc))
        raise ConnectionFailed(
            f"cannot connect to {label} ({server.describe(dbname)}) through the Cloud SQL "
            f"connector: {reason}",
            hint=f"check {label}.instance and ip_type, the credentials in dms.credentials "
            "(role Cloud SQL Client) and that port 3307 of the instance is reachable from here",
        ) from None
    conn.label = label  # type: ignore[attr-defined]
    return conn


class Pool:
    """Connections opened on first use per (label, database) and closed together."""

    def __init__(self, servers: dict[str, Server]) -> None:
        self._servers = servers
        self._open: dict[tuple[str, str | None], Connection] = {}
        self._own: list[Connection] = []

    def get(self, label: str, dbname: str | None = None) -> Connection:
        """The open connection for `label` ('source', 'target') and `dbname`."""
        key = (label, dbname)
        conn = self._open.get(key)
        if conn is None or conn.closed:
            conn = connect(self._servers[label], dbname, label=label)
            self._open[key] = conn
        return conn

    @contextmanager
    def borrow(self, label: str, dbname: str) -> Iterator[Connection]:
        """The shared connection to `dbname` if one is open, else one closed after the
        block: a look into the move's other databases holds no session in each."""
        shared = self._open.get((label, dbname))
        if shared is not None and not shared.closed:
            yield shared
            return
        conn = connect(self._servers[label], dbname, label=label)
        try:
            yield conn
        finally:
            conn.close()

    def open(self, label: str, dbname: str | None = None) -> Connection:
        """A connection of its own, not shared: closed by its user, at the latest with the pool."""
        conn = connect(self._servers[label], dbname, label=label)
        self._own.append(conn)
        return conn

    def discard(self, label: str) -> None:
        """Close the connections to one server (after it failed), so the next use reconnects."""
        for key in [k for k in self._open if k[0] == label]:
            self._open.pop(key).close()

    def release(self, dbname: str) -> None:
        """Close the shared connections to `dbname` on every server, once a command is done
        with it: a move of many databases holds sessions on the one it is at, not on all."""
        for key in [k for k in self._open if k[1] == dbname]:
            self._open.pop(key).close()

    def reset(self) -> None:
        """Close the shared connections (not those `open` gave out): the next use reconnects."""
        for conn in self._open.values():
            conn.close()
        self._open.clear()

    def close(self) -> None:
        """Close every connection."""
        self.reset()
        for conn in self._own:
            conn.close()
        self._own.clear()


@contextmanager
def pool(servers: dict[str, Server]) -> Iterator[Pool]:
    """A Pool that is closed on exit."""
    p = Pool(servers)
    try:
        yield p
    finally:
        p.close()


# Databases worked on at once, each on connections of its own. A promotion waits about
# 12 ms for its apply worker, a barrier for its commit's flush: one after another, a move
# of 30 databases spent 347 ms of its pause promoting.
AT_ONCE = 8


def each(items: Sequence[K], work: Callable[[K], T]) -> list[T]:
    """`work` done for every item (each on connections of its own), up to AT_ONCE at a
    time; every one is waited for, and the first failure in `items`' order is raised.
    The answers come in that order."""
    if len(items) < 2:
        return [work(item) for item in items]
    with ThreadPoolExecutor(min(AT_ONCE, len(items)), thread_name_prefix="each") as pool:
        futures = [pool.submit(work, item) for item in items]
    return [future.result() for future in futures]


def both(source: Callable[[], T], target: Callable[[], T]) -> tuple[T, T]:
    """Run a reading on each side at the same time (each on its own connection)."""
    with ThreadPoolExecutor(max_workers=1) as other:
        on_target = other.submit(target)
        return source(), on_target.result()
