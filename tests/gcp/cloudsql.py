"""What a Cloud SQL instance shows the connector: a CA, ephemeral certificates, port 3307.

The Cloud SQL connector asks the Admin API (the stand-in, tests/gcp/standin.py)
for an instance's connect settings (its addresses and server CA) and for an
ephemeral client certificate signed for the public key it sends; then it dials
the address of its IP type on port 3307 over TLS with that certificate. Here a
test CA signs both the endpoint's server certificate and the client
certificates, and an `Endpoint` on a loopback address's port 3307 requires a
client certificate of that CA, records whose it was, and relays the bytes to a
lab server. Each endpoint has a loopback address of its own (127.x.y.z), so
test workers never compete for one port 3307.
"""

import base64
import datetime
import errno
import json
import random
import secrets
import socket
import ssl
import tempfile
import threading
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from google.cloud.sql.connector.psycopg import _proxy

from cutover.lab import Lab

PORT = 3307  # the connector always dials the instance's port 3307
TOKEN_PATH = "/token"  # the service account key's token_uri, on the stand-in
LOGIN_SCOPE = "https://www.googleapis.com/auth/sqlservice.login"


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _pem(cert: x509.Certificate) -> str:
    return cert.public_bytes(serialization.Encoding.PEM).decode()


class CertificateAuthority:
    """The instance's CA: signs the endpoint's certificate and the connector's ephemeral ones."""

    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.cert = self._sign(_name("cutover test Cloud SQL CA"), self.key.public_key(), ca=True)
        self.issued: list[str] = []  # the common names of the client certificates signed

    def _sign(
        self, subject: x509.Name, public_key: Any, *, ca: bool = False, san: str | None = None
    ) -> x509.Certificate:
        now = datetime.datetime.now(datetime.UTC)
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject if ca else self.cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if san is not None:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(san)]), critical=False
            )
        return builder.sign(self.key, hashes.SHA256())

    @property
    def pem(self) -> str:
        """The CA certificate, as connectSettings' serverCaCert.cert."""
        return _pem(self.cert)

    def client_cert(self, public_key_pem: str, *, common_name: str) -> str:
        """An ephemeral certificate for the connector's public key (generateEphemeralCert)."""
        public_key = serialization.load_pem_public_key(public_key_pem.encode())
        self.issued.append(common_name)
        return _pem(self._sign(_name(common_name), public_key))

    def server_files(self, folder: Path, instance: str) -> tuple[Path, Path, Path]:
        """The endpoint's certificate, its key and the CA, as files for ssl."""
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self._sign(_name(instance), key.public_key(), san=instance)
        paths = (folder / f"{instance}.crt", folder / f"{instance}.key", folder / "ca.crt")
        paths[0].write_text(_pem(cert))
        paths[1].write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        paths[2].write_text(self.pem)
        return paths


@dataclass
class Endpoint:
    """An instance's port 3307: TLS that requires a client certificate of the CA, relayed
    to a lab server's port."""

    instance: str
    address: str
    target_port: int
    context: ssl.SSLContext
    peers: list[str] = field(default_factory=list)  # the client certificates' common names
    refused: list[str] = field(default_factory=list)  # why each refused handshake failed
    users: list[str] = field(default_factory=list)  # the user of each startup message
    _listener: socket.socket | None = None

    def start(self) -> None:
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((self.address, PORT))
        self._listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        if self._listener is not None:
            self._listener.close()

    def _accept(self) -> None:
        assert self._listener is not None
        while True:
            try:
                raw, _ = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        try:
            tls = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            self.refused.append(str(exc))
            raw.close()
            return
        cert = tls.getpeercert() or {}
        subject = dict(item[0] for item in cert.get("subject", ()))
        self.peers.append(str(subject.get("commonName", "")))
        startup = _startup_message(tls)
        self.users.append(_startup_user(startup))
        server = socket.create_connection(("127.0.0.1", self.target_port))
        server.sendall(startup)
        # The connector's own TLS-aware proxy loop serves this side just as well.
        _proxy(server, tls)


def _startup_message(tls: ssl.SSLSocket) -> bytes:
    """The client's first message: PostgreSQL's StartupMessage (its length first)."""
    data = b""
    while len(data) < 4 or len(data) < int.from_bytes(data[:4], "big"):
        chunk = tls.recv(8192)
        if not chunk:
            break
        data += chunk
    return data


def _startup_user(message: bytes) -> str:
    """The `user` parameter of a StartupMessage (after its length and protocol version)."""
    fields = message[8:].split(b"\x00")
    pairs = dict(zip(fields[::2], fields[1::2], strict=False))
    return pairs.get(b"user", b"").decode()


def _free_address() -> str:
    """A loopback address whose port 3307 is free (another worker may hold one)."""
    for _ in range(50):
        address = f"127.{random.randint(1, 254)}.{random.randint(0, 255)}.{random.randint(2, 254)}"
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.bind((address, PORT))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            continue
        finally:
            probe.close()
        return address
    raise RuntimeError("no loopback address with a free port 3307")


@dataclass
class Instances:
    """The Cloud SQL side the stand-in answers the connector with."""

    ca: CertificateAuthority
    endpoints: dict[str, Endpoint]
    tokens: dict[str, str] = field(default_factory=dict)  # access token -> its scope
    private_only: set[str] = field(default_factory=set)  # instances without a public address
    # Instances reached only by Private Service Connect: a DNS name, no IP address.
    psc_only: set[str] = field(default_factory=set)

    def connect_settings(self, project: str, instance: str) -> dict[str, Any]:
        """connectSettings' answer: the endpoint's address as the PRIVATE and PRIMARY one,
        unless an address is missing on purpose (`private_only`); for `psc_only`, no address
        but pscEnabled and the instance's DNS name, as sqladmin v1 has them (dnsName, and
        dnsNames of connectionType PRIVATE_SERVICE_CONNECT, dnsScope INSTANCE).

        The test has no DNS of its own: the name is the endpoint's loopback address,
        written as a fully qualified name (a trailing dot), which the system resolves
        to itself; what is tested is that the connector dials what these fields say."""
        endpoint = self.endpoints[instance]
        if instance in self.psc_only:
            name = endpoint.address + "."
            return {
                **self._settings(project, instance),
                "pscEnabled": True,
                "dnsName": name,
                "dnsNames": [
                    {
                        "name": name,
                        "connectionType": "PRIVATE_SERVICE_CONNECT",
                        "dnsScope": "INSTANCE",
                    }
                ],
            }
        addresses = [{"type": "PRIVATE", "ipAddress": endpoint.address}]
        if instance not in self.private_only:
            addresses.append({"type": "PRIMARY", "ipAddress": endpoint.address})
        return {**self._settings(project, instance), "ipAddresses": addresses}

    def _settings(self, project: str, instance: str) -> dict[str, Any]:
        return {
            "kind": "sql#connectSettings",
            "connectionName": f"{project}:europe-west1:{instance}",
            "region": "europe-west1",
            "databaseVersion": "POSTGRES_15",
            "backendType": "SECOND_GEN",
            "serverCaCert": {"kind": "sql#sslCert", "cert": self.ca.pem},
            "pscEnabled": False,
        }

    def token(self, form: Mapping[str, str]) -> dict[str, Any]:
        """The OAuth token endpoint of a service account key: the JWT's scope is recorded."""
        claims = form["assertion"].split(".")[1]
        scope = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))["scope"]
        token = secrets.token_urlsafe(16)
        self.tokens[token] = str(scope)
        return {"access_token": token, "expires_in": 3600, "token_type": "Bearer"}


def service_account_key(path: Path, endpoint: str) -> Path:
    """A service account's JSON key whose token_uri is the stand-in's token endpoint."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "lab-project",
        "private_key_id": "1",
        "private_key": pem,
        "client_email": "cutover@lab-project.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": endpoint.rstrip("/") + TOKEN_PATH,
    }
    path.write_text(json.dumps(info))
    path.chmod(0o600)
    return path


@contextmanager
def cloudsql_instances(lab: Lab, names: Mapping[str, str]) -> Iterator[Instances]:
    """Endpoints for instances (id -> lab server name), served until the block ends."""
    ca = CertificateAuthority()
    with ExitStack() as stack, tempfile.TemporaryDirectory() as folder:
        endpoints = {}
        for instance, server in names.items():
            cert, key, ca_file = ca.server_files(Path(folder), instance)
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(cert, key)
            context.load_verify_locations(ca_file)
            context.verify_mode = ssl.CERT_REQUIRED  # no client certificate of the CA: refused
            endpoint = Endpoint(instance, _free_address(), lab.server(server).port, context)
            endpoint.start()
            stack.callback(endpoint.close)
            endpoints[instance] = endpoint
        yield Instances(ca, endpoints)
