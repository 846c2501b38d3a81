"""A server named by its Cloud SQL instance connection name is reached through the connector.

The stand-in answers the connector's connectSettings and generateEphemeralCert
with a test CA; the instance's port 3307 is a TLS endpoint on a loopback address
that requires a client certificate of that CA and relays to a lab server
(tests/gcp/cloudsql.py). Commands connect in process through the connector,
and pg_dump through cutover's local relay to the same endpoint.
"""

import socket
import ssl
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from cutover.errors import ConnectionFailed, StepFailed
from cutover.lab import Lab
from cutover.pg import cloudsql, schema
from cutover.pg.connect import connect as cutover_connect
from cutover.pg.tools import client_env, run
from cutover.plan import Plan, load
from tests.conftest import Databases, Result, connect
from tests.gcp.cloudsql import (
    LOGIN_SCOPE,
    PORT,
    CertificateAuthority,
    Instances,
    cloudsql_instances,
    service_account_key,
)
from tests.gcp.standin import Standin
from tests.integration.conftest import dms_standin, wait_until

pytestmark = pytest.mark.integration

SOURCE = "lab-project:europe-west1:lab-source"


@dataclass
class Connected:
    """A dms plan whose source is the lab's, named by instance, and what serves it."""

    plan: Path
    standin: Standin
    instances: Instances
    db: str

    def source(self, **changes: Any) -> Plan:
        """The plan, its source's keys changed."""
        data = yaml.safe_load(self.plan.read_text())
        data["source"] = {**data["source"], **changes}
        self.plan.write_text(yaml.safe_dump(data))
        return load(self.plan)


@pytest.fixture
def connected(
    lab: Lab, databases: Databases, write_plan: Callable[..., Path], tmp_path: Path
) -> Iterator[Connected]:
    with ExitStack() as stack:
        stack.callback(cloudsql.close)  # this process's connectors and relays, opened by the test
        standin, dms = dms_standin(stack, lab, tmp_path)
        instances = stack.enter_context(cloudsql_instances(lab, {"lab-source": "source"}))
        standin.cloudsql = instances
        key = service_account_key(tmp_path / "key.json", dms["api_endpoints"]["sqladmin"])
        dms["credentials"] = f"file:{key}"
        db = databases.create()
        with connect(lab.server("source"), db) as conn:
            conn.execute("CREATE TABLE item (id int PRIMARY KEY, name text)")
            conn.execute("INSERT INTO item SELECT g, 'n' || g FROM generate_series(1, 10) g")
        plan = write_plan([db], engine="dms", dms=dms)
        data = yaml.safe_load(plan.read_text())
        reach = data["source"]
        data["source"] = {
            "instance": SOURCE,
            "user": reach["user"],
            "password": reach["password"],
            "replication_host": reach["host"],
        }
        plan.write_text(yaml.safe_dump(data))
        yield Connected(plan, standin, instances, db)


def test_check_and_pg_dump_reach_the_instance_through_the_connector(
    connected: Connected, cutover: Callable[..., Result], tmp_path: Path
) -> None:
    checked = cutover("check", "-p", str(connected.plan))
    assert checked.code == 0, checked.stdout + checked.stderr
    endpoint = connected.instances.endpoints["lab-source"]
    # Every connection of check went through port 3307 with a certificate of the CA.
    assert endpoint.peers
    assert set(endpoint.peers) == {"lab-project:lab-source"}
    assert connected.standin.requests_to("GET", r"/instances/lab-source/connectSettings$")

    # pg_dump, a child process, through the local relay to the same endpoint.
    before = len(endpoint.peers)
    plan = load(connected.plan)
    archive = tmp_path / "schema.dump"
    schema.dump(plan.source, connected.db, archive)
    names = [e.line for e in schema.toc(archive, section="pre-data")]
    assert any("TABLE public item" in n for n in names), names
    assert len(endpoint.peers) > before
    with cutover_connect(plan.source, connected.db, label="source") as conn:
        row = conn.execute(
            "SELECT count(*) AS n, current_setting('application_name') AS app FROM item"
        ).fetchone()
        assert conn.autocommit
    assert row == {"n": 10, "app": "cutover"}


def _handshake(address: str, context: ssl.SSLContext) -> None:
    """A TLS session to an endpoint; raises when the endpoint refuses it."""
    with (
        socket.create_connection((address, PORT), timeout=5) as raw,
        context.wrap_socket(raw) as tls,
    ):
        tls.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f")  # an SSLRequest, as bytes to relay
        if not tls.recv(1):  # TLS 1.3 tells the client of a refused certificate on reading
            raise ConnectionResetError("closed")


def test_the_endpoint_refuses_a_missing_or_foreign_certificate(
    connected: Connected, tmp_path: Path
) -> None:
    endpoint = connected.instances.endpoints["lab-source"]
    trusting = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    trusting.check_hostname = False
    trusting.load_verify_locations(cadata=connected.instances.ca.pem)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(endpoint.address, trusting)  # no client certificate

    foreign = CertificateAuthority()
    cert, key, _ = foreign.server_files(tmp_path, "impostor")
    trusting.load_cert_chain(cert, key)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _handshake(endpoint.address, trusting)  # a certificate another CA signed
    wait_until(lambda: len(endpoint.refused) == 2, seconds=5, what=str(endpoint.refused))
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in endpoint.refused[0]
    assert "CERTIFICATE_VERIFY_FAILED" in endpoint.refused[1]
    assert endpoint.peers == []


def test_iam_auth_sends_a_login_token_and_the_iam_user_without_password(
    connected: Connected,
) -> None:
    email = "migrator@lab-project.iam.gserviceaccount.com"
    plan = connected.source(user=email, password=None, iam_auth=True)
    # The stand-in's instance does not sign an IAM user in by its token (a Cloud SQL
    # instance does): the lab server asks for a password, which the connector never sends.
    with pytest.raises(ConnectionFailed, match="no password supplied"):
        cutover_connect(plan.source, label="source")
    asked = connected.standin.requests_to("POST", r"/instances/lab-source:generateEphemeralCert")
    body = asked[-1].body or {}
    assert connected.instances.tokens[body["access_token"]] == LOGIN_SCOPE
    endpoint = connected.instances.endpoints["lab-source"]
    assert endpoint.users == ["migrator@lab-project.iam"]  # the email without its domain

    # A child program through the relay: the same certificate, the same user.
    env = client_env(plan.source, "postgres", label="source")
    assert env["PGUSER"] == "migrator@lab-project.iam"
    assert "PGPASSWORD" not in env
    with pytest.raises(StepFailed, match="no password supplied"):
        run("psql", "-Atc", "SELECT 1", env=env, what="psql")
    assert len(endpoint.users) > 1
    assert set(endpoint.users) == {"migrator@lab-project.iam"}


def test_the_ip_type_chooses_the_address_and_a_missing_one_is_a_clear_error(
    connected: Connected,
) -> None:
    connected.instances.private_only.add("lab-source")
    plan = connected.source()
    with pytest.raises(ConnectionFailed, match=r"through the Cloud SQL connector.*PRIMARY"):
        cutover_connect(plan.source, label="source")
    plan = connected.source(ip_type="private")
    with cutover_connect(plan.source, label="source") as conn:
        assert conn.execute("SELECT 1 AS one").fetchone() == {"one": 1}


def test_ip_type_psc_dials_the_instances_private_service_connect_name(
    connected: Connected, cutover: Callable[..., Result], tmp_path: Path
) -> None:
    connected.instances.psc_only.add("lab-source")
    endpoint = connected.instances.endpoints["lab-source"]
    plan = connected.source()  # public: a PSC instance has no such address
    with pytest.raises(ConnectionFailed, match=r"through the Cloud SQL connector.*PRIMARY"):
        cutover_connect(plan.source, label="source")
    assert endpoint.peers == []

    plan = connected.source(ip_type="psc")
    checked = cutover("check", "-p", str(connected.plan))
    assert checked.code == 0, checked.stdout + checked.stderr
    assert set(endpoint.peers) == {"lab-project:lab-source"}  # port 3307 of that name
    before = len(endpoint.peers)
    archive = tmp_path / "schema.dump"
    schema.dump(plan.source, connected.db, archive)  # pg_dump, through the relay
    assert any("TABLE public item" in e.line for e in schema.toc(archive, section="pre-data"))
    with cutover_connect(plan.source, connected.db, label="source") as conn:
        assert conn.execute("SELECT count(*) AS n FROM item").fetchone() == {"n": 10}
    assert len(endpoint.peers) > before + 1


def test_a_dms_move_starts_with_every_source_connection_through_the_connector(
    connected: Connected, cutover: Callable[..., Result], lab: Lab
) -> None:
    plan = str(connected.plan)
    prepared = cutover("prepare", "-p", plan)
    assert prepared.code == 0, prepared.stdout + prepared.stderr
    started = cutover("start", "-p", plan, "--wait")
    assert started.code == 0, started.stdout + started.stderr
    with connect(lab.server("target"), connected.db) as conn:
        row = conn.execute("SELECT count(*) AS n FROM item").fetchone()
    assert row == {"n": 10}
    endpoint = connected.instances.endpoints["lab-source"]
    assert len(endpoint.peers) > 1
    assert set(endpoint.peers) == {"lab-project:lab-source"}
    # DMS's connection profile dials the address other servers reach the source at.
    profile = connected.standin.requests_to("POST", r"/connectionProfiles$")[0].body or {}
    assert profile["postgresql"]["host"] == lab.server("source").host
