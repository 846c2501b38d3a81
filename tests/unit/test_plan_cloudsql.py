"""A server named by its Cloud SQL instance connection name: what validates, what the errors say."""

import copy
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cutover.errors import UsageError
from cutover.plan import IpType, parse, parse_connection_name
from tests.unit.test_plan import VALID, error_of
from tests.unit.test_plan_dms import DMS

INSTANCE = {
    "instance": "shop-prod:europe-west1:shop-db",
    "user": "admin",
    "password": "env:PW",
    "replication_host": "10.1.0.5",
}


def with_source(**source: Any) -> dict[str, Any]:
    """VALID with its source replaced."""
    data = copy.deepcopy(VALID)
    data["source"] = source
    return data


def test_an_instance_takes_the_place_of_host_with_public_ip_and_a_password() -> None:
    plan = parse(with_source(**INSTANCE))
    assert plan.source.instance == "shop-prod:europe-west1:shop-db"
    assert plan.source.host is None
    assert plan.source.ip_type is IpType.PUBLIC
    assert not plan.source.iam_auth
    assert plan.source.describe("app") == "shop-prod:europe-west1:shop-db/app as admin"
    # Without a dms section, the connector asks Google's API with the application's credentials.
    assert plan.source.connector_settings() == (None, "application_default")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (
            {**INSTANCE, "host": "10.0.0.5"},
            "source: give exactly one of host (and port) or instance",
        ),
        (
            {"user": "admin"},
            "source: give exactly one of host (and port) or instance",
        ),
        ({**INSTANCE, "port": 5433}, "source: port is only for a server given by host"),
        (
            {**INSTANCE, "iam_auth": True},
            "source: iam_auth signs in with an IAM token, not a password",
        ),
        (
            {"host": "10.0.0.5", "user": "admin", "ip_type": "private"},
            "source: ip_type and iam_auth are only for a server given by instance",
        ),
        (
            {"host": "10.0.0.5", "user": "admin", "iam_auth": True},
            "source: ip_type and iam_auth are only for a server given by instance",
        ),
        ({**INSTANCE, "ip_type": "vpn"}, "source.ip_type: Input should be 'public', 'private'"),
        ({**INSTANCE, "instance": "shop-db"}, "source.instance: an instance connection name is"),
    ],
)
def test_each_mistake_says_what_to_give(source: dict[str, Any], expected: str) -> None:
    assert expected in error_of(with_source(**source))


def test_iam_auth_takes_the_iam_user_and_no_password() -> None:
    source = {**INSTANCE, "iam_auth": True, "ip_type": "psc", "user": "mover@p.iam"}
    del source["password"]
    plan = parse(with_source(**source))
    assert plan.source.iam_auth
    assert plan.source.ip_type is IpType.PSC
    assert plan.source.password is None


def test_the_connector_asks_the_dms_sections_api_with_its_credentials() -> None:
    data = copy.deepcopy(DMS)
    data["source"] = INSTANCE
    data["dms"]["credentials"] = "file:/run/key.json"
    data["dms"]["api_endpoints"] = {"sqladmin": "http://127.0.0.1:8080/"}
    plan = parse(data)
    assert plan.source.connector_settings() == ("http://127.0.0.1:8080/", "file:/run/key.json")
    assert plan.target.connector_settings() == (None, "application_default")  # a host
    # The reversed plan's target is the same server, its settings kept.
    assert plan.reversed().target.connector_settings() == plan.source.connector_settings()


def test_anonymous_credentials_cannot_serve_the_connector() -> None:
    data = copy.deepcopy(DMS)
    data["target"] = INSTANCE
    endpoint = "http://127.0.0.1:8080/"
    data["dms"]["credentials"] = "anonymous"
    data["dms"]["api_endpoints"] = dict.fromkeys(
        ("datamigration", "sqladmin", "monitoring"), endpoint
    )
    assert "target.instance: the Cloud SQL connector needs credentials that carry a token" in (
        error_of(data)
    )


def test_a_source_instance_needs_replication_host_for_the_target_to_reach_it() -> None:
    source = {k: v for k, v in INSTANCE.items() if k != "replication_host"}
    assert "source: a source given by instance needs replication_host" in error_of(
        with_source(**source)
    )


def test_a_target_instance_without_replication_host_is_no_address_for_repoint() -> None:
    data = copy.deepcopy(VALID)
    data["target"] = {k: v for k, v in INSTANCE.items() if k != "replication_host"}
    plan = parse(data)
    with pytest.raises(UsageError, match="shop-prod:europe-west1:shop-db") as caught:
        _ = plan.target.peer_host
    assert "give replication_host" in caught.value.hint
    assert parse(with_source(**INSTANCE)).source.peer_host == "10.1.0.5"


PROJECT = st.from_regex(r"\A[a-z][a-z0-9-]{4,28}[a-z0-9]\Z")
REGION = st.from_regex(r"\A[a-z]{2,12}-[a-z]{2,12}[0-9]{1,2}\Z")
INSTANCE_ID = st.from_regex(r"\A[a-z](?:[a-z0-9-]{0,20}[a-z0-9])?\Z")


@given(PROJECT, REGION, INSTANCE_ID, st.sampled_from(["", "example.com:"]))
def test_a_connection_name_parses_into_its_parts(
    project: str, region: str, instance: str, domain: str
) -> None:
    name = f"{domain}{project}:{region}:{instance}"
    assert parse_connection_name(name) == (f"{domain}{project}", region, instance)


@given(st.text(max_size=60))
def test_anything_else_is_one_value_error_that_never_repeats_it(text: str) -> None:
    try:
        parts = parse_connection_name(text)
    except ValueError as exc:
        assert str(exc) == REFUSAL  # the same words for every input: never the input
        return
    assert ":".join(parts) == text  # what parses is exactly its three parts
    assert "\n" not in text


REFUSAL = (
    "an instance connection name is project:region:instance, as the Cloud SQL "
    "console shows it (e.g. my-project:europe-west1:shop-db)"
)


def test_a_trailing_newline_is_refused() -> None:
    with pytest.raises(ValueError, match="project:region:instance"):
        parse_connection_name("shop-prod:europe-west1:shop-db\n")
