"""What the Kubernetes writer and repoint parse and map: label selectors, the recorded
writer state, the value a Secret's key gets, the held autoscaler's target, the plan."""

from urllib.parse import urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cutover.errors import PlanError, PreconditionFailed
from cutover.plan import RepointValue, Server, parse
from cutover.repoint.kubernetes import build_value, companion_name, names
from cutover.selectors import (
    Operator,
    Requirement,
    from_label_selector,
    matches,
    parse_selector,
    render_selector,
)
from cutover.writers.kubernetes import held_name
from cutover.writers.recorded import Autoscaler, CronJob, Kind, Recorded, Workload

names_ = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
keys = st.one_of(names_, st.builds(lambda p, n: f"{p}.io/{n}", names_, names_))
values = st.one_of(st.just(""), names_)
requirements = st.one_of(
    st.builds(lambda k, v: Requirement(k, Operator.EQUALS, (v,)), keys, values),
    st.builds(lambda k, v: Requirement(k, Operator.NOT_EQUALS, (v,)), keys, values),
    st.builds(
        lambda k, op, vs: Requirement(k, op, tuple(sorted(set(vs)))),
        keys,
        st.sampled_from([Operator.IN, Operator.NOT_IN]),
        st.lists(names_, min_size=1, max_size=3),
    ),
    st.builds(lambda k: Requirement(k, Operator.EXISTS), keys),
    st.builds(lambda k: Requirement(k, Operator.DOES_NOT_EXIST), keys),
)
selectors = st.lists(requirements, min_size=1, max_size=4).map(tuple)
labels = st.dictionaries(keys, names_, max_size=4)


@given(selectors)
def test_a_rendered_selector_parses_back_to_itself(selector: tuple[Requirement, ...]) -> None:
    assert parse_selector(render_selector(selector)) == selector


@given(selectors, labels)
def test_matching_follows_each_term(
    selector: tuple[Requirement, ...], found: dict[str, str]
) -> None:
    expected = True
    for r in selector:
        value = found.get(r.key)
        if r.operator in (Operator.EQUALS, Operator.IN):
            expected &= value in r.values
        elif r.operator in (Operator.NOT_EQUALS, Operator.NOT_IN):
            expected &= value not in r.values
        elif r.operator is Operator.EXISTS:
            expected &= value is not None
        else:
            expected &= value is None
    assert matches(selector, found) == expected


def test_the_forms_kubectl_takes() -> None:
    chosen = parse_selector("app = shop, tier in (web, api),!canary,env!=prod,team,x==y")
    assert render_selector(chosen) == "app=shop,tier in (api,web),!canary,env!=prod,team,x=y"
    assert matches(chosen, {"app": "shop", "tier": "web", "team": "a", "x": "y"})
    assert not matches(chosen, {"app": "shop", "tier": "web", "team": "a", "x": "y", "canary": ""})


@pytest.mark.parametrize(
    "text", ["", " ", "app in ()", "a b", "tier in (a", "=x", "app=x)", "UPPER_/x=y", "a=b=c"]
)
def test_malformed_selectors_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_selector(text)


@given(st.dictionaries(keys, names_, min_size=1, max_size=4), labels)
def test_a_workloads_match_labels_select_its_pods(
    wanted: dict[str, str], found: dict[str, str]
) -> None:
    selector = from_label_selector(wanted, None)
    assert matches(selector, found) == all(found.get(k) == v for k, v in wanted.items())
    assert matches(selector, {**found, **wanted})


def test_match_expressions_map_to_their_operators() -> None:
    selector = from_label_selector(
        {"app": "a"}, [("tier", "In", ["b", "a"]), ("canary", "DoesNotExist", None)]
    )
    assert render_selector(selector) == "app=a,tier in (a,b),!canary"
    with pytest.raises(ValueError, match="selects every pod"):
        from_label_selector({}, [])
    with pytest.raises(ValueError, match="unknown selector operator"):
        from_label_selector({}, [("a", "Gt", ["1"])])


recorded = st.builds(
    Recorded,
    st.lists(
        st.builds(Workload, st.sampled_from(list(Kind)), names_, st.integers(0, 1000)), max_size=3
    ).map(tuple),
    st.lists(
        st.builds(Autoscaler, names_, st.just("apps/v1"), st.just("Deployment"), names_),
        max_size=2,
    ).map(tuple),
    st.lists(st.builds(CronJob, names_, st.booleans()), max_size=2).map(tuple),
    st.booleans(),
    st.lists(names_, max_size=2).map(tuple),
)


@given(recorded)
def test_the_recorded_state_reads_back_as_written(state: Recorded) -> None:
    assert Recorded.from_dict(state.to_dict()) == state


def test_a_record_from_before_ended_jobs_reads_as_none_ended() -> None:
    old = {"workloads": [], "autoscalers": [], "cronjobs": [], "started": False}
    assert Recorded.from_dict(old).ended_jobs == ()


@pytest.mark.parametrize(
    "damaged",
    [
        {},
        {
            "workloads": [{"kind": "Pod", "name": "a", "replicas": 1}],
            "autoscalers": [],
            "cronjobs": [],
        },
        {
            "workloads": [{"kind": "Deployment", "name": "a", "replicas": -1}],
            "autoscalers": [],
            "cronjobs": [],
        },
        {
            "workloads": [{"kind": "Deployment", "name": "a", "replicas": True}],
            "autoscalers": [],
            "cronjobs": [],
        },
        {"workloads": [], "autoscalers": [], "cronjobs": [{"name": "c", "suspended": "no"}]},
        {"workloads": [], "autoscalers": [], "cronjobs": [], "ended_jobs": "nightly-1"},
    ],
)
def test_a_damaged_record_is_refused(damaged: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Recorded.from_dict(damaged)


hosts = st.from_regex(r"[a-z][a-z0-9-]{0,15}(\.[a-z][a-z0-9-]{0,10}){0,2}", fullmatch=True)
ports = st.integers(1, 65535)
secret_chars = st.text(st.characters(codec="ascii", categories=["L", "N"]), min_size=1, max_size=12)


@given(secret_chars, secret_chars, hosts, ports, hosts, ports, names_)
def test_a_dsn_keeps_its_credentials_database_and_options_and_takes_the_target_address(
    user: str, password: str, old_host: str, old_port: int, host: str, port: int, db: str
) -> None:
    current = f"postgresql://{user}:{password}@{old_host}:{old_port}/{db}?sslmode=require"
    target = Server(host=host, port=port, user="cutover")

    value = build_value(RepointValue.DSN, current, target)

    parts = urlsplit(value)
    assert (parts.username, parts.password, parts.hostname, parts.port) == (
        user,
        password,
        host,
        port,
    )
    assert (parts.path, parts.query) == (f"/{db}", "sslmode=require")
    assert names(value, RepointValue.DSN, target)
    assert names(current, RepointValue.DSN, target) == ((old_host, old_port) == (host, port))


@given(
    hosts, ports, st.sampled_from([RepointValue.HOST, RepointValue.PORT, RepointValue.HOST_PORT])
)
def test_host_and_port_values_name_the_target(host: str, port: int, kind: RepointValue) -> None:
    target = Server(host="public.example", port=port, user="u", replication_host=host)
    value = build_value(kind, None, target)
    assert value == {"host": host, "port": str(port), "host:port": f"{host}:{port}"}[kind.value]
    assert names(value, kind, target)


def test_a_dsn_needs_a_connection_string_to_retarget() -> None:
    with pytest.raises(PreconditionFailed, match="no connection string"):
        build_value(RepointValue.DSN, None, Server(host="h", user="u"))


@given(st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,251}[a-z0-9])?", fullmatch=True))
def test_held_and_companion_names_are_valid_names_of_their_own(name: str) -> None:
    for other in (held_name(name), companion_name(name)):
        assert other != name and len(other) <= 253
        assert other[-1].isalnum()


def _plan(writer: dict[str, object] | None = None, repoint: dict[str, object] | None = None):  # type: ignore[no-untyped-def]
    data: dict[str, object] = {
        "move": "m",
        "source": {"host": "a", "user": "u"},
        "target": {"host": "b", "user": "u"},
        "databases": ["db"],
    }
    if writer is not None:
        data["writers"] = [{"name": "w", "kubernetes": {"namespace": "shop", **writer}}]
    if repoint is not None:
        data["repoint"] = [{"name": "r", "kubernetes": {"namespace": "shop", **repoint}}]
    return parse(data)


def test_the_plan_takes_kubernetes_writers_and_repoints() -> None:
    plan = _plan(
        {"deployments": ["api"], "selector": "tier in (web)"}, {"secret": "db", "key": "URL"}
    )
    assert plan.writers[0].has_health  # ready replicas against the recorded counts
    assert plan.writers[0].kubernetes is not None
    assert plan.writers[0].kubernetes.kubeconfig is None  # in-cluster
    assert plan.writers[0].kubernetes.end_running_jobs is False  # running Jobs waited for
    assert plan.repoint[0].kubernetes is not None
    assert plan.repoint[0].kubernetes.value is RepointValue.DSN


@pytest.mark.parametrize(
    ("writer", "repoint", "message"),
    [
        ({}, None, "name deployments, statefulsets or cronjobs, or give a selector"),
        ({"selector": "app in ("}, None, "unbalanced parentheses"),
        ({"deployments": ["Bad_Name"]}, None, "a Kubernetes name"),
        (None, {"key": "URL"}, "give exactly one of secret, config_map"),
        (None, {"secret": "a", "config_map": "b", "key": "URL"}, "give exactly one of"),
        (None, {"secret": "a", "key": "no spaces"}, "repoint[0].kubernetes.key"),
    ],
)
def test_the_plan_refuses_what_cannot_work(
    writer: dict[str, object] | None, repoint: dict[str, object] | None, message: str
) -> None:
    with pytest.raises(PlanError) as refused:
        _plan(writer, repoint)
    assert message in refused.value.message
