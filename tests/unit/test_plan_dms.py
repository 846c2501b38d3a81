"""The plan's dms section: what validates, what does not, and what the errors say."""

import copy
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cutover.engines import engine_for
from cutover.errors import PlanError
from cutover.pg.connect import Pool
from cutover.plan import CloudCredentials, Connectivity, parse

DMS: dict[str, Any] = {
    "move": "shop_2026",
    "engine": "dms",
    "source": {"host": "10.0.0.5", "user": "postgres", "password": "env:SOURCE_PW"},
    "target": {"host": "10.0.0.6", "user": "postgres", "password": "env:TARGET_PW"},
    "databases": ["app"],
    "dms": {
        "project": "shop-prod",
        "region": "europe-west1",
        "source_instance": "shop-db",
        "target_instance": "shop-db-16",
    },
}


def with_dms(**changes: Any) -> dict[str, Any]:
    """DMS with keys of its dms section set (a value None removes the key)."""
    data = copy.deepcopy(DMS)
    for key, value in changes.items():
        if value is None:
            data["dms"].pop(key, None)
        else:
            data["dms"][key] = value
    return data


def error_of(data: dict[str, Any]) -> str:
    with pytest.raises(PlanError) as caught:
        parse(data)
    return caught.value.message


def test_a_minimal_section_validates_with_its_defaults() -> None:
    plan = parse(DMS)
    assert plan.dms is not None
    assert plan.dms.connectivity is Connectivity.STATIC_IP
    assert plan.dms.credentials == CloudCredentials.APPLICATION_DEFAULT
    assert plan.dms.new_target is None
    assert plan.dms.api_endpoints.datamigration is None


def test_a_full_section_validates() -> None:
    plan = parse(
        with_dms(
            connectivity="vpc_peering",
            network="projects/shop-prod/global/networks/default",
            credentials="file:/run/secrets/gcp-key.json",
            new_target={
                "database_version": "POSTGRES_16",
                "tier": "db-custom-2-7680",
                "availability_type": "REGIONAL",
                "database_flags": {"max_connections": "200"},
                "root_password": "env:ROOT_PW",
            },
            api_endpoints={"datamigration": "http://127.0.0.1:9/"},
        )
    )
    assert plan.dms is not None and plan.dms.new_target is not None
    assert plan.dms.new_target.availability_type == "REGIONAL"
    assert plan.dms.credentials == "file:/run/secrets/gcp-key.json"


def test_engine_dms_without_a_section_says_what_is_missing() -> None:
    data = copy.deepcopy(DMS)
    del data["dms"]
    message = error_of(data)
    assert "engine: dms needs a dms section" in message
    assert "project, region, source_instance, target_instance" in message


def test_a_section_for_another_engine_is_refused() -> None:
    data = copy.deepcopy(DMS)
    data["engine"] = "pglogical"
    assert "the dms section is only for engine: dms (this plan's engine is pglogical)" in (
        error_of(data)
    )


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"connectivity": "vpc_peering"}, "dms: connectivity vpc_peering needs network"),
        ({"network": "projects/p/global/networks/n"}, "network is only for connectivity: vpc_"),
        ({"connectivity": "vpn"}, "dms.connectivity: Input should be 'static_ip' or 'vpc_"),
        ({"target_instance": "shop-db"}, "source_instance and target_instance must differ"),
        ({"project": "Shop"}, "dms.project: a project ID is 6 to 30 characters"),
        ({"region": "europe"}, "dms.region: a region such as europe-west1"),
        ({"source_instance": "shop:db"}, "dms.source_instance: a Cloud SQL instance ID is"),
        ({"target_instance": "p:europe-west1:db"}, "not project:region:instance"),
        ({"source_instance": None}, "dms.source_instance: Field required"),
        ({"credentials": "anonymous"}, "credentials: anonymous is only for a stand-in server"),
        ({"api_endpoints": {"sqladmin": "ftp://x"}}, "dms.api_endpoints.sqladmin: String should"),
        ({"regoin": "x"}, "dms.regoin: unknown key; did you mean 'region'?"),
        (
            {"new_target": {"tier": "db-f1-micro", "database_version": "16"}},
            "dms.new_target.database_version: a version as Cloud SQL names it, e.g. POSTGRES_16",
        ),
    ],
)
def test_mistakes_are_named_with_their_path(changes: dict[str, Any], expected: str) -> None:
    assert expected in error_of(with_dms(**changes))


def test_anonymous_credentials_pass_with_every_endpoint() -> None:
    endpoint = "http://127.0.0.1:9/"
    endpoints = {"datamigration": endpoint, "sqladmin": endpoint, "monitoring": endpoint}
    plan = parse(with_dms(credentials="anonymous", api_endpoints=endpoints))
    assert plan.dms is not None and plan.dms.credentials == CloudCredentials.ANONYMOUS


@given(st.text(alphabet=st.characters(exclude_characters=":"), min_size=1, max_size=40))
def test_a_literal_credential_is_refused_and_never_repeated(tail: str) -> None:
    secret = "Pw#" + tail  # unlike any word of the message
    message = error_of(with_dms(credentials=secret))
    assert "dms.credentials: credentials are application_default, anonymous" in message
    assert secret not in message


def test_the_engine_factory_builds_dms_and_only_it_loads_google_s_client() -> None:
    endpoint = "http://127.0.0.1:9/"
    endpoints = {"datamigration": endpoint, "sqladmin": endpoint, "monitoring": endpoint}
    plan = parse(with_dms(credentials="anonymous", api_endpoints=endpoints))
    engine = engine_for(plan, Pool({}))  # nothing is sent or connected yet
    assert engine.kind == "dms"
    assert engine.traits.copies_schema and engine.traits.target_read_only_until_promote
    assert not engine.traits.sets_sequences_at_promote  # the switch copies them after
    native = {**copy.deepcopy(DMS), "engine": "native"}
    del native["dms"]
    script = (
        "import sys\n"
        "from cutover.engines import engine_for\n"
        "from cutover.pg.connect import Pool\n"
        "from cutover.plan import parse\n"
        f"engine_for(parse({native!r}), Pool({{}}))\n"
        "loaded = sorted(m for m in sys.modules if m.startswith(('google', 'cutover.cloud')))\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], check=False, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
