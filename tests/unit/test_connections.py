"""The connections check: whether a move's sessions fit beside the application's."""

import re

from hypothesis import given
from hypothesis import strategies as st

from cutover.pg.catalog import ConnectionUse
from cutover.preflight import Status, connections_finding, move_sessions

RANK = {Status.OK: 0, Status.WARN: 1, Status.FAIL: 2}

uses = st.builds(
    ConnectionUse,
    limit=st.integers(1, 10_000),
    reserved=st.integers(0, 100),
    others=st.integers(0, 10_000),
)


@given(use=uses, databases=st.integers(1, 2_000), more=st.integers(0, 500))
def test_more_sessions_of_others_or_more_databases_never_make_it_better(
    use: ConnectionUse, databases: int, more: int
) -> None:
    now = connections_finding("source", use, databases=databases).status
    busier = ConnectionUse(use.limit, use.reserved, use.others + more)
    assert RANK[connections_finding("source", busier, databases=databases).status] >= RANK[now]
    bigger = connections_finding("source", use, databases=databases + more).status
    assert RANK[bigger] >= RANK[now]


@given(use=uses, databases=st.integers(1, 2_000))
def test_a_blocker_exactly_when_the_move_does_not_fit_in_what_is_free(
    use: ConnectionUse, databases: int
) -> None:
    finding = connections_finding("target", use, databases=databases)
    # Two a database in the switch and the maintenance database, or start's: the
    # maintenance database, the database at hand and two copy jobs.
    sessions = max(2 * databases + 1, 4)
    fits = use.others + sessions <= use.limit - use.reserved
    assert (finding.status is Status.FAIL) == (not fits)
    assert finding.scope == "target" and finding.check == "connections"
    assert f"max_connections = {use.limit}" in finding.detail
    assert f"holds up to {sessions} ({databases} database(s), two sessions" in finding.detail
    if finding.status is not Status.OK:
        assert "raise max_connections" in finding.hint


def test_what_stays_free_decides_between_a_warning_and_ok() -> None:
    # 100 slots, 3 reserved: a move of 10 databases holds 21, its exporter 11 more.
    fine = connections_finding("source", ConnectionUse(100, 3, 40), databases=10)
    assert fine.status is Status.OK  # 36 stay free, 25 with the exporter; a tenth is 10
    assert fine.detail.endswith("; 36 stay free, 25 with the exporter running")
    exporting = connections_finding("source", ConnectionUse(100, 3, 58), databases=10)
    assert exporting.status is Status.WARN
    assert exporting.detail.endswith(
        "; with the exporter running (cutover metrics, 11 more) 7 would stay free for the "
        "application (less than 10)"
    )
    warned = connections_finding("source", ConnectionUse(100, 3, 70), databases=10)
    assert warned.status is Status.WARN
    assert warned.detail.endswith("; 6 would stay free for the application (less than 10)")
    refused = connections_finding("source", ConnectionUse(100, 3, 80), databases=10)
    assert refused.status is Status.FAIL
    assert refused.detail.endswith("17 are free: the application would be refused connections")
    # A small server: at least 5 stay free (a move of 4 databases holds 9).
    small = connections_finding("source", ConnectionUse(25, 3, 9), databases=4)
    assert small.status is Status.WARN and "(less than 5)" in small.detail


@given(use=uses, databases=st.integers(1, 2_000))
def test_a_move_that_does_not_fit_is_told_the_largest_that_would(
    use: ConnectionUse, databases: int
) -> None:
    finding = connections_finding("source", use, databases=databases)
    found = re.search(r"several moves, one after another, of at most (\d+)", finding.hint)
    if finding.status is Status.OK or found is None:
        return
    most = int(found.group(1))
    room = max(5, use.limit // 10)
    assert use.free - move_sessions(most) >= room  # that many leave the application its room
    assert use.free - move_sessions(most + 1) < room  # and one more would not
    assert connections_finding("source", use, databases=most).status is not Status.FAIL


def test_a_server_too_full_for_any_move_is_told_so_without_a_size() -> None:
    full = connections_finding("source", ConnectionUse(20, 3, 15), databases=1)
    assert full.status is Status.FAIL
    assert "or move the databases in several moves;" in full.hint
    tight = connections_finding("source", ConnectionUse(100, 3, 70), databases=10)
    assert "several moves, one after another, of at most 8 (that many" in tight.hint
