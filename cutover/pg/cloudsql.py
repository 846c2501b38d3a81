"""Connections to a Cloud SQL instance named by its connection name, through Google's connector.

The connector (cloud-sql-python-connector) asks the Cloud SQL Admin API for the
instance's addresses and server CA and for an ephemeral client certificate
signed for a key of its own, dials the instance's port 3307 over TLS with that
certificate, and hands psycopg the far end of a local socket. With `iam_auth`
the certificate carries an IAM token that signs the user in, without password.
One Connector per Admin API endpoint and credentials serves the whole process
(it caches the certificates it fetched); each is closed when the process exits.
Child programs (psql, pg_dump, pg_restore) reach an instance through a `Relay`.
"""

import asyncio
import atexit
import logging
import os
import shutil
import socket
import ssl
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from google.cloud.sql.connector import Connector, IPTypes
from google.cloud.sql.connector.client import CloudSQLClient
from google.cloud.sql.connector.psycopg import _proxy
from google.cloud.sql.connector.utils import generate_keys

from cutover.cloud.client import credentials_for
from cutover.errors import PreconditionFailed
from cutover.plan import IpType, Server

_IP_TYPES = {
    IpType.PUBLIC: IPTypes.PUBLIC,
    IpType.PRIVATE: IPTypes.PRIVATE,
    IpType.PSC: IPTypes.PSC,
}

# What the relay uses of a Connector beyond its public calls (see Relay).
_INTERNALS = (
    "_loop",
    "_keys",
    "_client",
    "_resolver",
    "_resolver_cls",
    "_sqladmin_api_endpoint",
    "_quota_project",
    "_credentials",
    "_user_agent",
    "_timeout",
    "_get_or_create_cache",
)
# The port every Cloud SQL instance's server-side proxy listens on.
SERVER_PROXY_PORT = 3307

log = logging.getLogger(__name__)
_lock = threading.Lock()
_connectors: dict[tuple[str | None, str], Connector] = {}
_relays: dict[tuple[str, IpType, bool, str | None, str], "Relay"] = {}


def connector(server: Server) -> Connector:
    """The process's Connector for the server's Admin API endpoint and credentials."""
    settings = server.connector_settings()
    with _lock:
        found = _connectors.get(settings)
        if found is None:
            endpoint, credentials = settings
            found = Connector(
                credentials=credentials_for(credentials),
                # The client appends /sql/v1beta4/...: a stand-in's URL without its final slash.
                sqladmin_api_endpoint=endpoint.rstrip("/") if endpoint else None,
                # Lazy: a certificate is fetched when a connection needs one, and no
                # background task refreshes it between the steps of a short command.
                refresh_strategy="lazy",
            )
            _connectors[settings] = found
        return found


def connect(server: Server, params: dict[str, Any], **options: Any) -> Any:
    """A psycopg connection through the connector; `params` are conninfo's keywords.

    The connector chooses the address and the TLS, so host, port and sslmode are
    dropped; a password is sent only without IAM authentication.
    """
    assert server.instance is not None
    kwargs = {k: v for k, v in params.items() if k not in ("host", "port", "sslmode", "dbname")}
    kwargs.pop("sslrootcert", None)
    kwargs["timeout"] = kwargs.pop("connect_timeout")
    return connector(server).connect(
        server.instance,
        "psycopg",
        db=params["dbname"],
        ip_type=_IP_TYPES[server.ip_type],
        enable_iam_auth=server.iam_auth,
        **kwargs,
        **options,
    )


def iam_user(user: str) -> str:
    """The database user of an IAM principal: a service account's email loses its domain."""
    return user.removesuffix(".gserviceaccount.com")


@dataclass(frozen=True)
class Address:
    """Where a child program (psql, pg_dump) reaches an instance: a socket folder and port."""

    host: str  # a folder that only this user may enter, holding .s.PGSQL.<port>
    port: int


class Relay:
    """A local socket for psql, pg_dump and pg_restore, relayed to an instance over the
    connector's TLS.

    Why it exists: a child program speaks libpq, which cannot dial the instance's
    port 3307 with the connector's ephemeral certificate, and the connector has no
    public way to open a socket for anyone but its own driver call (the Cloud SQL
    Auth Proxy is Google's answer to that). So, per client that connects here, the
    relay takes the same steps as `Connector.connect_async` before it hands a socket
    to a driver (the Admin API's connect settings and ephemeral certificate, cached
    and refreshed by the connector; the address of `ip_type`; TLS to port 3307), and
    moves bytes with the connector's own TLS-aware proxy loop. Those steps use the
    connector's internals (read in 1.23): a release without them is
    refused before any child program starts.

    The socket is a Unix socket in a fresh folder of mode 0700, not a TCP port: with
    IAM authentication the certificate itself signs the user in, so no other user of
    the machine may reach it.
    """

    def __init__(self, server: Server) -> None:
        assert server.instance is not None
        self._server = server
        self._instance = server.instance
        self._connector = connector(server)
        missing = [name for name in _INTERNALS if not hasattr(self._connector, name)]
        if missing:
            raise PreconditionFailed(
                f"this cloud-sql-python-connector has no {', '.join(missing)}: psql, pg_dump "
                f"and pg_restore cannot reach {self._instance} through it",
                hint="install cloud-sql-python-connector 1.23, or run the Cloud SQL "
                "Auth Proxy and give the server's host and port instead of its instance",
            )
        self._folder = Path(tempfile.mkdtemp(prefix="cutover-cloudsql-"))
        os.chmod(self._folder, 0o700)
        self.address = Address(str(self._folder), 5432)
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(self._folder / f".s.PGSQL.{self.address.port}"))
        self._listener.listen(16)
        threading.Thread(target=self._accept, name=f"relay {self._instance}", daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            loop = self._connector._loop
            remote = asyncio.run_coroutine_threadsafe(self._open(), loop).result()
        except Exception as exc:  # the child sees its connection closed; the log says why
            log.warning("cannot relay to %s: %s", self._instance, exc)
            client.close()
            return
        _proxy(client, remote)

    async def _open(self) -> ssl.SSLSocket:
        """A TLS socket to the instance, as the connector opens one for a driver."""
        found = self._connector
        # What connect_async creates on first use, created here the same way.
        if found._keys is None:
            found._keys = asyncio.create_task(generate_keys())
        if found._client is None:
            found._client = CloudSQLClient(
                found._sqladmin_api_endpoint,
                found._quota_project,
                found._credentials,
                user_agent=found._user_agent,
                driver="psycopg",
            )
        if found._resolver is None:
            found._resolver = found._resolver_cls(client=found._client)
        name = await found._resolver.resolve(self._instance)
        cache = found._get_or_create_cache(name, self._server.iam_auth)
        info = await cache.connect_info()
        ip = info.get_preferred_ip(_IP_TYPES[self._server.ip_type])
        context = await info.create_ssl_context(self._server.iam_auth)
        loop = asyncio.get_running_loop()
        raw = await loop.run_in_executor(
            None, socket.create_connection, (ip, SERVER_PROXY_PORT), found._timeout
        )
        raw.settimeout(None)  # the timeout bounds the dial only; a session may idle
        try:
            return await loop.run_in_executor(
                None, lambda: context.wrap_socket(raw, server_hostname=ip)
            )
        except BaseException:
            raw.close()
            raise

    def close(self) -> None:
        """Stop listening and remove the socket's folder."""
        self._listener.close()
        shutil.rmtree(self._folder, ignore_errors=True)


def relay(server: Server) -> Address:
    """The local socket a child program uses to reach the server's instance (one per process)."""
    assert server.instance is not None
    key = (server.instance, server.ip_type, server.iam_auth, *server.connector_settings())
    with _lock:
        found = _relays.get(key)
    if found is None:
        made = Relay(server)
        with _lock:
            found = _relays.setdefault(key, made)
        if found is not made:
            made.close()
    return found.address


def close() -> None:
    """Close every relay and Connector of this process (their refreshes, their HTTP client)."""
    with _lock:
        for each in _relays.values():
            each.close()
        _relays.clear()
        for found in _connectors.values():
            found.close()
        _connectors.clear()


atexit.register(close)
