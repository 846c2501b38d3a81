"""The write load's audit: which errors the application saw are the fence's, which are not."""

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cutover import load

START = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)
WINDOW = (START.isoformat(), (START + timedelta(seconds=1)).isoformat())


def write_log(path: Path, entries: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(e) + "\n" for e in entries))
    return path


def error(at: datetime, code: str | None) -> dict[str, object]:
    return {
        "op": "error",
        "key": "DATABASE_URL",
        "code": code,
        "error": "x",
        "ack": False,
        "at": at.isoformat(),
    }


@given(
    offset=st.floats(min_value=-30, max_value=30, allow_nan=False),
    code=st.sampled_from([None, "57P01", "28000", "25006", "08006", "42501", "23505", "55P03"]),
)
def test_an_error_is_the_fences_only_in_the_switch_and_of_the_fences_kind(
    tmp_path_factory: pytest.TempPathFactory, offset: float, code: str | None
) -> None:
    path = tmp_path_factory.mktemp("audit") / "writes.jsonl"
    at = START + timedelta(seconds=offset)
    write_log(path, [error(at, code)])
    result = load.audit(path, {}, source_port=1, fenced_at=None, switch_window=WINDOW)
    in_window = START <= at <= START + timedelta(seconds=1 + load.FENCE_GRACE)
    expected = in_window and code in load.FENCE_CODES
    assert result.fenced_errors == (1 if expected else 0)
    assert len(result.errors) == (0 if expected else 1)
    if not expected:
        assert f"[{code}]" in result.errors[0]


def test_without_a_switch_every_error_counts(tmp_path: Path) -> None:
    path = write_log(tmp_path / "w.jsonl", [error(START, "57P01")])
    result = load.audit(path, {}, source_port=1, fenced_at=None)
    assert result.fenced_errors == 0 and len(result.errors) == 1


def test_errors_do_not_disturb_the_write_audit(tmp_path: Path) -> None:
    at = START.isoformat()
    entries: list[dict[str, object]] = [
        {"op": "insert", "table": "t", "v": 1, "ack": False, "at": at},
        error(START, "57P01"),
        {"op": "insert", "table": "t", "id": 7, "v": 1, "port": 5, "ack": True, "at": at},
    ]
    path = write_log(tmp_path / "w.jsonl", entries)
    result = load.audit(path, {"t": {7: 1}}, source_port=5, fenced_at=None, switch_window=WINDOW)
    assert (result.acknowledged, result.missing, result.fenced_errors) == (1, [], 1)
