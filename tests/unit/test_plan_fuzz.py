"""The plan loader fuzzed: whatever the file holds, a plan or a PlanError, never a secret said.

Documents are drawn around a plan with every kind of section (so the fuzz
reaches each model's validators), one node at a time replaced by any YAML value,
and every field that holds a secret given a literal value that no error may echo.
"""

import copy
from contextlib import suppress
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from cutover.errors import PlanError
from cutover.plan import load, parse

MARK = "Sx9-cRet-7734"  # a literal secret: never in an error
FULL: dict[str, Any] = {
    "move": "orders_2026",
    "engine": "native",
    "source": {"host": "10.0.0.5", "user": "admin", "password": "env:SOURCE_PASSWORD"},
    "target": {"host": "10.0.0.6", "port": 5433, "user": "admin", "password": "file:/run/pw"},
    "databases": ["app", "billing"],
    "writers": [
        {"name": "jobs", "tier": 0, "command": {"stop": ["true"], "start": ["true"]}},
        {"name": "web", "tier": 1, "http": {"stop": "http://lb/a", "start": "http://lb/b"}},
        {
            "name": "k8s",
            "tier": 2,
            "kubernetes": {"namespace": "shop", "deployments": ["api"], "cronjobs": ["nightly"]},
        },
        {
            "name": "pool",
            "tier": 3,
            "pgbouncer": {
                "pgbouncers": [{"host": "pgb", "user": "admin", "password": "env:PGB"}],
                "databases": ["app"],
            },
        },
    ],
    "repoint": [
        {"name": "env", "file": {"path": "/etc/app.env", "key": "DATABASE_URL"}},
        {"name": "secret", "kubernetes": {"namespace": "shop", "secret": "db", "key": "URL"}},
    ],
    "fence": {"roles": ["app"]},
    "ledger": {"configmap": {"namespace": "shop", "lease_duration": "30s"}},
    "thresholds": {"max_switch_lag": "512kB", "switch_timeout": "1m30s"},
}
SECRETS = ("source.password", "target.password", "writers.3.pgbouncer.pgbouncers.0.password")


def paths(node: Any, prefix: str = "") -> list[str]:
    """Every dotted path in a document (integers index lists)."""
    found = [prefix] if prefix else []
    if isinstance(node, dict | list):
        for key, child in node.items() if isinstance(node, dict) else enumerate(node):
            found += paths(child, f"{prefix}.{key}" if prefix else str(key))
    return found


def replaced(data: Any, path: str, value: Any) -> Any:
    data = copy.deepcopy(data)
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    node[int(last) if isinstance(node, list) else last] = value
    return data


yaml_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from(["", "-1", "1e999", "env:", "file:", "1h1h", "0", "${X}", MARK]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


def said(data: Any) -> str:
    """What parsing says: nothing for a plan, the error's text for a PlanError."""
    try:
        parse(data)
    except PlanError as error:
        return f"{error.message}\n{error.hint}"
    return ""


def test_the_full_plan_parses_and_each_literal_secret_is_refused_unsaid() -> None:
    assert said(FULL) == ""
    assert len(paths(FULL)) > 60
    for secret in SECRETS:
        refused = said(replaced(FULL, secret, MARK))
        assert "literal secret is not allowed" in refused and MARK not in refused


@settings(max_examples=400)
@given(st.data(), yaml_values)
def test_any_one_node_replaced_gives_a_plan_or_a_plan_error(
    data: st.DataObject, value: Any
) -> None:
    path = data.draw(st.sampled_from(paths(FULL)), label="path")
    document = replaced(FULL, path, value)
    for secret in SECRETS:  # every secret a literal: refused, and never echoed
        if not path.startswith(secret) and not secret.startswith(path):
            document = replaced(document, secret, MARK)
    assert MARK not in said(document)


@given(st.text(max_size=300))
def test_any_text_as_the_plan_file_gives_a_plan_or_a_plan_error(
    tmp_path_factory: Any, text: str
) -> None:
    path = Path(tmp_path_factory.mktemp("plan")) / "plan.yaml"
    path.write_text(text)
    with suppress(PlanError):
        load(path)
