"""The pure parts of cutover.cloud: flag merging, answers mapped to types, masks, request IDs."""

import json
import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from google.auth.credentials import AnonymousCredentials
from hypothesis import given
from hypothesis import strategies as st

from cutover.cloud.client import (
    Clients,
    credentials_for,
    mask_secrets,
    request_id,
)
from cutover.cloud.resources import (
    Api,
    BackupStatus,
    Flag,
    InstanceState,
    JobPhase,
    JobState,
    backup_run_from,
    dms_operation_from,
    flags_differ,
    format_time,
    instance_from,
    job_from,
    merge_flags,
    parse_time,
    series_from,
    sql_operation_from,
    status_from,
)
from cutover.cloud.sqladmin import SqlAdmin
from cutover.errors import UsageError
from cutover.log import MASK

names = st.sampled_from(["a", "b", "c", "work_mem", "cloudsql.logical_decoding", "x.y"])
values = st.text(alphabet="0123456789abcdefon", min_size=0, max_size=4)
flag_lists = st.lists(st.builds(Flag, names, st.none() | values), max_size=8)
wanted_maps = st.dictionaries(names, st.none() | values, max_size=4)
# Any JSON an API could send, or garble.
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(flag_lists, wanted_maps)
def test_merge_sets_and_removes_the_wanted_flags_and_keeps_the_others_in_order(
    current: list[Flag], wanted: dict[str, str | None]
) -> None:
    merged = merge_flags(current, wanted)
    untouched = [f for f in current if f.name not in wanted]
    assert [f for f in merged if f.name not in wanted] == untouched
    for name, value in wanted.items():
        assert [f.value for f in merged if f.name == name] == ([] if value is None else [value])


@given(flag_lists, wanted_maps)
def test_after_a_merge_nothing_differs_and_merging_again_changes_nothing(
    current: list[Flag], wanted: dict[str, str | None]
) -> None:
    merged = merge_flags(current, wanted)
    assert flags_differ(merged, wanted) == {}
    assert merge_flags(merged, wanted) == merged


@given(flag_lists, wanted_maps)
def test_nothing_differs_only_when_the_merge_would_change_nothing(
    current: list[Flag], wanted: dict[str, str | None]
) -> None:
    if len({f.name for f in current}) != len(current):
        return  # a list with a name twice is changed by any merge of that name
    unchanged = list(merge_flags(current, wanted)) == current
    assert (flags_differ(current, wanted) == {}) == unchanged


@given(flag_lists)
def test_an_instance_s_flags_and_settings_are_read_as_sent(flags: list[Flag]) -> None:
    data = {
        "name": "db",
        "state": "RUNNABLE",
        "instanceType": "READ_REPLICA_INSTANCE",
        "masterInstanceName": "db-master",
        "settings": {
            "databaseFlags": [f.to_json() for f in flags],
            "backupConfiguration": {
                "enabled": True,
                "pointInTimeRecoveryEnabled": False,
                "startTime": "03:00",
                "transactionLogRetentionDays": "7",
            },
        },
    }
    instance = instance_from(data)
    assert list(instance.flags) == flags
    assert instance.state is InstanceState.RUNNABLE
    assert instance.master_instance_name == "db-master"
    assert instance.backup.enabled and not instance.backup.point_in_time_recovery
    assert instance.backup.transaction_log_retention_days == 7


job_fields = st.sampled_from(["name", "state", "phase", "error", "source"])
states = st.sampled_from([s.value for s in JobState])


@given(st.dictionaries(job_fields, json_values | states))
def test_a_job_maps_from_any_answer_without_raising(data: dict[str, Any]) -> None:
    job = job_from(data)
    assert isinstance(job.state, JobState) and isinstance(job.phase, JobPhase)
    if data.get("state") in [s.value for s in JobState]:
        assert job.state.value == data["state"]
    else:
        assert job.state is JobState.STATE_UNSPECIFIED


@given(st.sampled_from(list(JobState)), st.sampled_from(list(JobPhase)))
def test_only_a_running_job_in_cdc_is_promotable(state: JobState, phase: JobPhase) -> None:
    job = job_from(
        {"name": "projects/p/locations/r/migrationJobs/j", "state": state, "phase": phase}
    )
    assert job.id == "j"
    assert job.is_promotable == (
        state is JobState.RUNNING and phase in (JobPhase.CDC, JobPhase.READY_FOR_PROMOTE)
    )


@given(json_values, json_values, json_values)
def test_operations_and_statuses_map_from_any_answer(done: Any, error: Any, status: Any) -> None:
    dms = dms_operation_from({"name": "n", "done": done, "error": error})
    assert dms.done is (done is True) and dms.api is Api.DATAMIGRATION
    sql = sql_operation_from({"name": "n", "status": status, "error": error})
    assert sql.done is (status == "DONE") and sql.api is Api.SQLADMIN
    backup_run_from({"id": "1", "status": status, "error": error})


def test_statuses_name_their_code() -> None:
    assert str(status_from({"code": 9, "message": "not yet"})) == "FAILED_PRECONDITION: not yet"
    assert status_from({"code": 0}) is None
    assert status_from({}) is None
    assert str(status_from({"code": 99, "message": "m"})) == "99: m"
    failed = sql_operation_from(
        {
            "name": "op",
            "status": "DONE",
            "targetProject": "p",
            "backupContext": {"backupId": "42"},
            "error": {"errors": [{"code": "ERROR_X", "message": "one"}, {"message": "two"}]},
        }
    )
    assert str(failed.error) == "ERROR_X: one; two"
    assert (failed.project, failed.backup_id) == ("p", "42")
    assert backup_run_from({"id": "1", "status": "SUCCESSFUL"}).status is BackupStatus.SUCCESSFUL


moments = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)


@given(moments)
def test_times_go_and_come_back_as_the_same_moment(moment: datetime) -> None:
    assert parse_time(format_time(moment)) == moment


@given(moments, st.integers(0, 999), st.sampled_from(["Z", "+02:00", "-05:30"]))
def test_nanoseconds_and_offsets_are_read(moment: datetime, nanos: int, zone: str) -> None:
    text = moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + f"{nanos:03d}" + zone
    parsed = parse_time(text)
    assert parsed is not None
    offset = (
        timedelta(0)
        if zone == "Z"
        else (-1 if zone[0] == "-" else 1) * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    )
    assert parsed == moment.replace(tzinfo=None).replace(tzinfo=UTC) - offset


@given(st.text(max_size=30))
def test_a_time_that_is_not_rfc3339_is_none_not_an_error(text: str) -> None:
    parse_time(text)


@given(
    st.lists(
        st.tuples(moments, st.integers(-(2**63), 2**63 - 1) | st.floats(allow_nan=False)),
        max_size=6,
        unique_by=lambda p: p[0],
    )
)
def test_a_series_keeps_every_point_newest_first(points: list[tuple[datetime, float]]) -> None:
    data = {
        "metric": {"type": "m", "labels": {"database": "app"}},
        "resource": {"type": "r", "labels": {"migration_job_id": "j"}},
        "points": [
            {
                "interval": {"endTime": format_time(at)},
                "value": {"int64Value": str(v)} if isinstance(v, int) else {"doubleValue": v},
            }
            for at, v in points
        ],
    }
    series = series_from(data)
    assert series.metric_labels == {"database": "app"}
    assert series.resource_labels == {"migration_job_id": "j"}
    expected = sorted(points, key=lambda p: p[0], reverse=True)
    assert [(p.end_time, p.value) for p in series.points] == [(t, float(v)) for t, v in expected]


@given(json_values)
def test_a_series_from_a_garbled_answer_does_not_raise(points: Any) -> None:
    series_from({"points": points, "metric": points, "resource": points})


secret = st.text(alphabet="ABCDEFGHJKLMNPQRSTUVWXYZ", min_size=12, max_size=20)


@given(json_values, secret, st.sampled_from(["password", "rootPassword", "clientKey"]))
def test_a_secret_field_is_masked_at_any_depth(around: Any, value: str, key: str) -> None:
    body = {"outer": [{"inner": {key: value, "other": around}}], "keep": around}
    shown = json.dumps(mask_secrets(body))
    assert value not in shown and MASK in shown
    assert mask_secrets({"keep": around}) == {"keep": around}


@given(st.text(min_size=1, max_size=40), st.text(min_size=1, max_size=60), st.integers(0, 9))
def test_request_ids_are_stable_valid_and_distinct(move: str, step: str, generation: int) -> None:
    rid = request_id(move, step, generation=generation)
    assert rid == request_id(move, step, generation=generation)
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", rid)
    assert rid != request_id(move, step + ".", generation=generation)
    assert rid != request_id(move, step, generation=generation + 1)


def test_a_call_renders_its_path_without_alt_and_its_body_masked() -> None:
    clients = Clients(credentials=AnonymousCredentials())
    instance = instance_from({"name": "db", "settings": {"databaseFlags": []}})
    call = SqlAdmin(clients, project="p-123456").patch_flags(instance, {"work_mem": "64MB"})
    assert call is not None
    assert "alt=json" in call.uri and call.uri.startswith("https://sqladmin.googleapis.com/")
    assert call.render() == (
        'sqladmin: PATCH /v1/projects/p-123456/instances/db {"settings":{"databaseFlags":'
        '[{"name":"work_mem","value":"64MB"}]}}'
    )


def test_a_key_that_is_not_json_is_refused_without_its_content(tmp_path: Any) -> None:
    key = tmp_path / "key.json"
    key.write_text("not-a-key-Qx7v9Lm2")
    with pytest.raises(UsageError) as caught:
        credentials_for(f"file:{key}")
    assert caught.value.message == f"dms.credentials: file:{key} does not hold a JSON key"
    assert "Qx7v9Lm2" not in caught.value.message + caught.value.hint
    key.write_text('{"type": "service_account", "private_key": "-----BEGIN PRIVATE KEY-----x"}')
    with pytest.raises(UsageError) as caught:
        credentials_for(f"file:{key}")
    assert "is not a service account's key" in caught.value.message
    assert "BEGIN" not in caught.value.message


def test_anonymous_credentials_need_nothing() -> None:
    assert isinstance(credentials_for("anonymous"), AnonymousCredentials)


def test_a_service_account_key_by_reference_is_used_and_its_private_key_masked(
    tmp_path: Any,
) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from google.oauth2 import service_account

    from cutover.log import redact

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        .decode()
    )
    key = tmp_path / "key.json"
    key.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "shop-prod",
                "private_key_id": "k1",
                "private_key": pem,
                "client_email": "cutover@shop-prod.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    )
    credentials = credentials_for(f"file:{key}")
    assert isinstance(credentials, service_account.Credentials)
    assert credentials.service_account_email == "cutover@shop-prod.iam.gserviceaccount.com"
    assert credentials.scopes == ["https://www.googleapis.com/auth/cloud-platform"]
    assert redact(f"key: {pem}") == f"key: {MASK}"
