"""Reading a saved plan's JSON, and the destroy guard (no binary needed)."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cutover.cloud.terraform import refuse_destroys, summary
from cutover.errors import PreconditionFailed, StepFailed

ACTIONS = st.sampled_from(
    [
        ["no-op"],
        ["create"],
        ["read"],
        ["update"],
        ["delete"],
        ["delete", "create"],
        ["create", "delete"],
    ]
)
ADDRESSES = st.from_regex(r"[a-z_]{1,8}\.[a-z_]{1,8}", fullmatch=True)
ENTRIES = st.lists(
    st.fixed_dictionaries(
        {"address": ADDRESSES, "change": st.fixed_dictionaries({"actions": ACTIONS})}
    ),
    max_size=8,
)


@given(ENTRIES, st.sets(ADDRESSES, max_size=3))
def test_the_guard_refuses_exactly_the_destroys_not_allowed(
    entries: list[dict[str, object]], allowed: set[str]
) -> None:
    plan = summary({"resource_changes": entries})
    gone = {
        e["address"]
        for e in entries
        if "delete" in e["change"]["actions"]  # type: ignore[index,operator]
    }
    assert set(plan.destroyed()) == gone
    if gone - allowed:
        with pytest.raises(PreconditionFailed) as refused:
            refuse_destroys(plan, allowed=allowed)
        assert all(a in refused.value.message for a in gone - allowed)
    else:
        refuse_destroys(plan, allowed=allowed)
    assert plan.empty == all(e["change"]["actions"] in (["no-op"], ["read"]) for e in entries)  # type: ignore[index]


@given(
    st.recursive(
        st.none() | st.text(max_size=5) | st.integers(),
        lambda c: st.lists(c) | st.dictionaries(st.text(max_size=5), c),
        max_leaves=10,
    )
)
def test_any_json_reads_as_a_plan_or_a_clear_error_never_a_crash(shown: object) -> None:
    try:
        plan = summary(shown if isinstance(shown, dict) else {"resource_changes": shown})
    except StepFailed as exc:
        assert "no known shape" in exc.message
    else:
        assert isinstance(plan.lines(), list)


def test_a_replace_reads_as_one_and_the_lines_name_each_change() -> None:
    plan = summary(
        {
            "resource_changes": [
                {
                    "address": "google_sql_database_instance.source",
                    "change": {"actions": ["delete", "create"]},
                },
                {
                    "address": "google_sql_database_instance.target",
                    "change": {"actions": ["update"]},
                },
                {"address": "google_sql_user.app", "change": {"actions": ["no-op"]}},
            ]
        }
    )
    assert plan.lines() == [
        "replace google_sql_database_instance.source",
        "update google_sql_database_instance.target",
    ]
    assert summary({}).lines() == ["no changes"]
