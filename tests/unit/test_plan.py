"""The plan: what validates, what does not, and what the errors say."""

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from cutover.errors import PlanError, UsageError
from cutover.plan import (
    Engine,
    format_location,
    load,
    parse,
    parse_bytes,
    parse_duration,
    resolve_secret,
)

VALID: dict[str, Any] = {
    "move": "orders_2026",
    "source": {"host": "10.0.0.5", "user": "admin", "password": "env:SOURCE_PASSWORD"},
    "target": {"host": "10.0.0.6", "port": 5433, "user": "admin", "password": "file:/run/pw"},
    "databases": ["app", "billing"],
    "writers": [
        {
            "name": "workers",
            "tier": 1,
            "command": {"stop": "kubectl scale --replicas=0 x", "start": ["true"]},
        },
        {
            "name": "web",
            "tier": 2,
            "http": {"stop": "http://lb/block", "start": "http://lb/unblock"},
        },
    ],
    "repoint": [{"name": "env", "file": {"path": "/etc/app.env", "key": "DATABASE_URL"}}],
    "thresholds": {"max_switch_lag": "512kB", "switch_timeout": "1m30s"},
}


def with_change(path: str, value: Any) -> dict[str, Any]:
    """VALID with one key set (a dotted path; integers index lists)."""
    data = copy.deepcopy(VALID)
    parts = path.split(".")
    node: Any = data
    for part in parts[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    last = parts[-1]
    if value is DELETE:
        del node[last]
    else:
        node[int(last) if last.isdigit() else last] = value
    return data


DELETE = object()


def error_of(data: Any) -> str:
    with pytest.raises(PlanError) as caught:
        parse(data)
    assert caught.value.exit_code == 2
    return caught.value.message


def test_a_valid_plan_parses_with_units_and_defaults() -> None:
    plan = parse(VALID)
    assert plan.engine is Engine.NATIVE
    assert plan.source.port == 5432
    assert plan.thresholds.max_switch_lag == 512 * 1024
    assert plan.thresholds.switch_timeout == 90.0
    assert plan.thresholds.lock_timeout == 2.0
    assert plan.writers[0].command is not None
    assert plan.writers[0].command.stop == ["kubectl", "scale", "--replicas=0", "x"]
    assert [[w.name for w in tier] for tier in plan.tiers()] == [["workers"], ["web"]]


def test_writers_without_tiers_stop_in_list_order_and_share_a_tier_when_told() -> None:
    data = with_change(
        "writers",
        [
            {"name": "a", "command": {"stop": "x", "start": "y"}},
            {"name": "b", "tier": 0, "command": {"stop": "x", "start": "y"}},
            {"name": "c", "command": {"stop": "x", "start": "y"}},
        ],
    )
    assert [[w.name for w in t] for t in parse(data).tiers()] == [["a", "b"], ["c"]]


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        ("source.host", DELETE, "source: give exactly one of host (and port) or instance"),
        ("target.port", "five", "target.port: Input should be a valid integer"),
        ("target.port", 70000, "target.port: Input should be less than or equal to 65535"),
        ("engine", "mysql", "engine: Input should be 'native', 'pglogical' or 'dms'"),
        ("databases", [], "databases: List should have at least 1 item"),
        ("databases", ["app", "app"], "databases: names must be unique, repeated: app"),
        ("move", "Orders-2026", "move: a move name is 1 to 40 characters"),
        ("writers.1.http.stop", DELETE, "writers[1].http.stop: Field required"),
        ("writers.1.http.stop", "ftp://x", "writers[1].http.stop: String should match pattern"),
        (
            "writers.0.command.stop",
            [],
            "writers[0].command.stop: Value should have at least 1 item",
        ),
        (
            "thresholds.switch_timeout",
            "60 parsecs",
            "thresholds.switch_timeout: expected a duration",
        ),
        ("thresholds.max_switch_lag", "1 MiBs", "thresholds.max_switch_lag: expected a size"),
        ("thresholds.lock_timeout", -1, "thresholds.lock_timeout: a duration cannot be negative"),
        (
            "repoint.0.file",
            DELETE,
            "repoint[0]: give exactly one of file, command, pgbouncer, kubernetes (found 0)",
        ),
    ],
)
def test_each_mistake_names_its_path(path: str, value: Any, expected: str) -> None:
    assert expected in error_of(with_change(path, value))


def test_a_writer_with_two_kinds_is_refused() -> None:
    data = with_change("writers.0.http", {"stop": "http://a/b", "start": "http://a/c"})
    assert (
        "writers[0]: give exactly one of http, command, pgbouncer, kubernetes (found 2)"
        in error_of(data)
    )


def test_an_unknown_key_is_named_with_a_suggestion() -> None:
    data = with_change("writers.1.htttp", {"stop": "http://a"})
    message = error_of(data)
    assert "writers[1].htttp: unknown key; did you mean 'http'?" in message
    assert "allowed: command, http, kubernetes, name, pgbouncer, tier" in message


def test_every_error_is_reported_at_once() -> None:
    data = with_change("source.port", "x")
    data["target"]["user"] = ""
    data["thresholds"]["drain_timeout"] = "soon"
    message = error_of(data)
    assert "source.port" in message
    assert "target.user" in message
    assert "thresholds.drain_timeout" in message


@pytest.mark.parametrize(
    "path",
    ["source.password", "target.password", "writers.1.http.token", "writers.0.command.env"],
)
def test_a_literal_secret_is_refused_and_never_echoed(path: str) -> None:
    value: Any = "hunter2-S3cret!"
    if path.endswith(".env"):  # a command's environment: a map of references
        value = {"PGPASSWORD": value}
    message = error_of(with_change(path, value))
    assert "a literal secret is not allowed" in message
    assert "env:NAME" in message and "file:PATH" in message
    assert "hunter2" not in message


def test_a_command_env_takes_references_under_variable_names() -> None:
    refs = {"PGPASSWORD": "env:APP_PW", "TOKEN": "file:/run/token"}
    plan = parse(with_change("writers.0.command.env", refs))
    assert plan.writers[0].command is not None and plan.writers[0].command.env == refs
    message = error_of(with_change("writers.0.command.env", {"PG-PW": "env:APP_PW"}))
    assert "writers[0].command.env.PG-PW" in message and "letters, digits and _" in message


def test_a_password_inside_a_url_or_dsn_is_refused_and_never_echoed() -> None:
    message = error_of(with_change("writers.1.http.stop", "http://ops:t0ps3cret@lb/block"))
    assert "this URL holds a password" in message
    assert "t0ps3cret" not in message
    value = "host=db user=app password=t0ps3cret"
    message = error_of(with_change("repoint.0.file.value", value))
    assert "holds a password" in message and "t0ps3cret" not in message


@given(st.text(min_size=1).filter(lambda s: not s.startswith(("env:", "file:"))))
def test_any_literal_password_is_refused_without_echo(secret: str) -> None:
    data = with_change("source.password", secret)
    with pytest.raises(PlanError) as caught:
        parse(data)
    # What the error says of any password: a secret may only appear as part of that text.
    said_anyway = error_of(with_change("source.password", "\x01"))
    if len(secret) >= 4 and secret not in said_anyway:
        assert secret not in caught.value.message


def test_a_plan_that_is_not_a_mapping() -> None:
    assert "a plan is a YAML mapping" in error_of(["move", "x"])


def test_load_reports_yaml_syntax_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "plan.yaml"
    path.write_text("move: x\nsource:\n  host: [unclosed\n")
    with pytest.raises(PlanError) as caught:
        load(path)
    assert "not valid YAML at line" in caught.value.message


def test_load_of_a_missing_file_says_how_to_give_one(tmp_path: Path) -> None:
    with pytest.raises(PlanError) as caught:
        load(tmp_path / "absent.yaml")
    assert "cannot read the plan" in caught.value.message
    assert "CUTOVER_PLAN" in caught.value.hint


def test_load_anchors_a_relative_state_dir_beside_the_plan(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "plan.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(VALID))
    assert load(path).state_dir == (tmp_path / "sub" / ".cutover")


def test_secret_references_resolve_from_env_and_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUTOVER_TEST_PW", "from-env")
    assert resolve_secret("env:CUTOVER_TEST_PW", where="source.password") == "from-env"
    secret_file = tmp_path / "pw"
    secret_file.write_text("from-file\n")
    assert resolve_secret(f"file:{secret_file}", where="source.password") == "from-file"


def test_missing_secret_references_name_the_key_not_the_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CUTOVER_ABSENT", raising=False)
    with pytest.raises(UsageError) as caught:
        resolve_secret("env:CUTOVER_ABSENT", where="target.password")
    assert caught.value.message == "target.password refers to env:CUTOVER_ABSENT, which is not set"
    with pytest.raises(UsageError) as caught:
        resolve_secret(f"file:{tmp_path}/nope", where="source.password")
    assert "cannot be read (No such file or directory)" in caught.value.message


# -- units and locations, property-based ---------------------------------------------------

UNITS = {"B": 1, "kB": 1024, "MB": 1024**2, "GB": 1024**3, "TB": 1024**4, "MiB": 1024**2}


@given(st.integers(min_value=0, max_value=10**6), st.sampled_from(sorted(UNITS)))
def test_sizes_parse_with_every_unit(number: int, unit: str) -> None:
    assert parse_bytes(f"{number}{unit}") == number * UNITS[unit]
    assert parse_bytes(f" {number} {unit.lower()} ") == number * UNITS[unit]


@given(
    st.lists(
        st.tuples(st.integers(0, 10_000), st.sampled_from(["ms", "s", "m", "min", "h", "d"])),
        min_size=1,
        max_size=4,
    )
)
def test_durations_add_up_their_parts(parts: list[tuple[int, str]]) -> None:
    factor = {"ms": 0.001, "s": 1, "m": 60, "min": 60, "h": 3600, "d": 86400}
    text = "".join(f"{n}{u}" for n, u in parts)
    assert parse_duration(text) == pytest.approx(sum(n * factor[u] for n, u in parts))


@given(st.one_of(st.text(), st.integers(), st.floats(allow_nan=False), st.booleans()))
def test_unit_parsers_only_ever_raise_value_error(value: object) -> None:
    for parser in (parse_bytes, parse_duration):
        try:
            result = parser(value)
        except ValueError:
            continue
        assert result >= 0


@given(
    st.lists(
        st.one_of(st.integers(0, 99), st.from_regex(r"[a-z_]{1,8}", fullmatch=True)), max_size=6
    )
)
def test_locations_read_like_the_yaml_they_point_at(loc: list[int | str]) -> None:
    text = format_location(tuple(loc))
    if not loc:
        assert text == "(top level)"
        return
    assert text.count("[") == sum(isinstance(p, int) for p in loc)
    assert all(str(p) in text for p in loc)
    assert not text.startswith(".")
