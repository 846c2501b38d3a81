"""What logical replication does not carry, without servers: packages, the plan key, grants."""

import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cutover import preflight
from cutover.errors import PlanError
from cutover.pg.large_objects import LargeObject, metadata
from cutover.plan import LargeObjects, parse

# Debian policy: lowercase letters, digits, +, - and ., at least two, starting alphanumeric.
DEBIAN_PACKAGE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
versions = st.one_of(
    st.integers(100000, 199999),  # 10 and later: major * 10000 + minor
    st.sampled_from([90400, 90500, 90600]),  # before 10: 9.x
)


@given(name=st.text(min_size=1, max_size=40), version=versions)
def test_every_guess_is_a_debian_package_name_for_that_major(name: str, version: int) -> None:
    package = preflight.package_for(name, version)
    major = preflight.debian_major(version)
    if package is None:  # nothing of the name survives in a package name
        assert not re.sub(r"[^a-z0-9+.]+", "", name.lower())
        return
    assert DEBIAN_PACKAGE.match(package), package
    assert package.startswith(("postgresql-", "timescaledb-"))
    assert re.search(rf"(^|-){re.escape(major)}(-|$)", package), (package, major)


@given(name=st.sampled_from(sorted(preflight.CONTRIB)), version=versions)
def test_contrib_comes_with_the_server_package(name: str, version: int) -> None:
    assert preflight.package_for(name, version) == f"postgresql-{preflight.debian_major(version)}"


@pytest.mark.parametrize(
    ("extension", "version", "package"),
    [
        ("hstore", 150007, "postgresql-15"),
        ("uuid-ossp", 160002, "postgresql-16"),
        ("pglogical", 150007, "postgresql-15-pglogical"),
        ("pglogical_origin", 140011, "postgresql-14-pglogical"),
        ("postgis", 150007, "postgresql-15-postgis-3"),
        ("postgis_topology", 170000, "postgresql-17-postgis-3"),
        ("vector", 150007, "postgresql-15-pgvector"),
        ("pg_cron", 150007, "postgresql-15-cron"),
        ("pg_hint_plan", 150007, "postgresql-15-pg-hint-plan"),
        ("plpython3u", 150007, "postgresql-plpython3-15"),
        ("hstore_plperl", 130000, "postgresql-plperl-13"),
        ("timescaledb", 150007, "timescaledb-2-postgresql-15"),
        ("ip4r", 150007, "postgresql-15-ip4r"),
        ("hll", 90624, "postgresql-9.6-hll"),
    ],
)
def test_known_extensions_name_their_package(extension: str, version: int, package: str) -> None:
    assert preflight.package_for(extension, version) == package


def test_a_missing_extension_is_a_blocker_that_names_what_to_install() -> None:
    target = preflight.Extensions(frozenset({"hstore", "pg_trgm"}), 150007)
    installed = {"hstore": "1.8", "vector": "0.7.0", "postgis": "3.4", "pg_trgm": "1.6"}
    [finding] = preflight.extension_findings(installed, target, "source/app")
    assert finding.status is preflight.Status.FAIL
    assert finding.detail == (
        "2 extensions not available on the target: postgis (package postgresql-15-postgis-3), "
        "vector (package postgresql-15-pgvector)"
    )
    assert finding.fix == ("apt-get install postgresql-15-pgvector postgresql-15-postgis-3",)
    assert "managed service" in finding.hint and "console" in finding.hint
    [ok] = preflight.extension_findings({"hstore": "1.8"}, target, "source/app")
    assert ok.status is preflight.Status.OK


def plan_data(**extra: Any) -> dict[str, Any]:
    server = {"host": "h", "user": "u"}
    return {"move": "m", "source": server, "target": server, "databases": ["app"], **extra}


def test_large_objects_fail_unless_the_plan_copies_them() -> None:
    assert parse(plan_data()).large_objects is LargeObjects.FAIL
    assert parse(plan_data(large_objects="copy")).large_objects is LargeObjects.COPY
    with pytest.raises(PlanError, match=r"large_objects: Input should be 'fail' or 'copy'"):
        parse(plan_data(large_objects="dump"))


def grants(*items: tuple[str, str, bool]) -> tuple[tuple[str, str, bool], ...]:
    return items


def rendered(obj: LargeObject, owner: str, given: tuple[tuple[str, str, bool], ...]) -> list[str]:
    return [c.as_string() for c in metadata(obj, owner=owner, grants=given)]


def test_a_fresh_object_gets_its_owner_and_only_the_grants_it_lacks() -> None:
    default = grants(("app", "SELECT", False), ("app", "UPDATE", False))
    obj = LargeObject(16400, "app", 10, default)
    # Created by the copy's user: a new owner takes the default privileges over.
    creator = grants(("postgres", "SELECT", False), ("postgres", "UPDATE", False))
    assert rendered(obj, "postgres", creator) == ['ALTER LARGE OBJECT 16400 OWNER TO "app"']
    assert rendered(obj, "app", default) == []


def test_grants_the_object_only_lacks_are_added_in_the_sources_order() -> None:
    wanted = grants(
        ("Ünï cöde", "SELECT", False),
        ("Ünï cöde", "UPDATE", False),
        ("reader", "SELECT", True),
        ("", "UPDATE", False),
    )
    obj = LargeObject(7, "Ünï cöde", 0, wanted)
    present = grants(("postgres", "SELECT", False), ("postgres", "UPDATE", False))
    assert rendered(obj, "postgres", present) == [
        'ALTER LARGE OBJECT 7 OWNER TO "Ünï cöde"',
        'GRANT SELECT ON LARGE OBJECT 7 TO "reader" WITH GRANT OPTION',
        "GRANT UPDATE ON LARGE OBJECT 7 TO PUBLIC",
    ]


def test_other_grants_are_revoked_from_all_named_and_given_again_as_the_source_has_them() -> None:
    wanted = grants(("app", "SELECT", False), ("reader", "SELECT", False))
    obj = LargeObject(7, "app", 0, wanted)
    present = grants(("app", "SELECT", False), ("app", "UPDATE", False), ("", "SELECT", False))
    assert rendered(obj, "app", present) == [
        'REVOKE ALL ON LARGE OBJECT 7 FROM PUBLIC, "app", "reader" CASCADE',
        'GRANT SELECT ON LARGE OBJECT 7 TO "app"',
        'GRANT SELECT ON LARGE OBJECT 7 TO "reader"',
    ]
