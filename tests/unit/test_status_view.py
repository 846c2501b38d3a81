"""What `cutover status` says for a move's state, read or partly read, without servers."""

from rich.console import Console

from cutover import cli
from cutover.state import DatabaseState, LedgerState, MoveState, Replication, Views
from cutover.types import Lag, Side, SyncProgress, TableState

LEDGER = LedgerState(
    where="state/m.ledger.json",
    steps=(),
    interrupted=(),
    switched=False,
    pauses={},
    rollbacks={},
    verification=None,
)
LAG = Lag(
    bytes=2_000_000, seconds=3.0, connected=False, retained_bytes=3_000_000, retention="reserved"
)


def move_of(
    replication: Replication,
    *,
    views: Views | None = None,
    target: bool = True,
    problems: tuple[str, ...] = (),
) -> MoveState:
    """A move of one database, 'app'."""
    db = DatabaseState("app", target or None, replication, views, None, None, switched=False)
    return MoveState(
        move="m",
        engine="native",
        servers={Side.SOURCE: True, Side.TARGET: target},
        databases={"app": db},
        fenced_roles=(),
        ledger=LEDGER,
        problems=problems,
        measured_at=0.0,
        seconds=0.0,
    )


def shown(move: MoveState) -> str:
    """The status text, unwrapped."""
    console = Console(record=True, width=500)
    console.print(cli._status_view(move))
    return console.export_text()


def test_a_disabled_subscription_its_lag_and_unpopulated_views_are_said_in_words() -> None:
    tables = {'"public"."t"': TableState.READY, '"public"."u"': TableState.READY}
    stopped = Replication(
        subscribed=True,
        streaming=False,
        slot_exists=True,
        lag=LAG,
        progress=SyncProgress(tables, 10, 10),
    )
    views = Views(('"public"."v"', '"public"."w"'), ('"public"."w"',))
    text = shown(move_of(stopped, views=views))
    assert (
        "app: 2 tables (2 ready); the subscription is disabled: no change is applied; "
        "lag 1.9 MB, 3.0 s; WAL retained 2.9 MB (reserved); "
        'materialized views: 1 of 2 populated on the target (not yet: "public"."w")'
    ) in text
    assert "WARNING" not in text


def test_a_copy_lists_the_tables_not_ready_and_a_slot_at_risk_is_a_warning() -> None:
    tables = {'"public"."t"': TableState.COPYING, '"public"."u"': TableState.READY}
    at_risk = Lag(
        bytes=0,
        seconds=None,
        connected=True,
        retained_bytes=1000,
        safe_bytes=100,
        retention="extended",
    )
    copying = Replication(
        subscribed=False,
        slot_exists=True,
        lag=at_risk,
        progress=SyncProgress(tables, 4096, 1024),
    )
    assert copying.copying and copying.slot_at_risk
    text = shown(move_of(copying))
    assert (
        "app: initial copy, 1.0 kB of 4.0 kB; 2 tables (1 copying, 1 ready); "
        "lag 0 B, ?; WAL retained 1000 B (extended)"
    ) in text
    assert 'not ready yet: "public"."t" (copying)' in text
    assert "WARNING: the slot is close to being invalidated" in text


def test_a_target_that_does_not_answer_leaves_the_source_side_and_the_reason() -> None:
    reason = "cannot connect to target (127.0.0.1:1/app): connection refused"
    partly = Replication(subscribed=None, slot_exists=True, lag=LAG)
    move = move_of(partly, target=False, problems=(reason,))
    text = shown(move)
    assert f"not read: {reason}" in text
    assert "app: the subscription was not read; lag 1.9 MB" in text

    data = cli._status_data(move)
    assert data["servers"] == {"source": True, "target": False}
    assert data["servers_error"] == reason
    app = data["databases"]["app"]
    assert (app["replicating"], app["copying"], app["tables"]) == (False, False, None)
    assert app["slot"]["lag_bytes"] == 2_000_000


def test_a_slot_not_read_is_not_called_missing() -> None:
    streaming = Replication(subscribed=True, streaming=True, progress=SyncProgress({}, 0, 0))
    assert "the replication slot was not read" in shown(move_of(streaming))
    gone = Replication(subscribed=True, streaming=True, slot_exists=False)
    assert "the replication slot is missing on the source" in shown(move_of(gone))
    assert "replication not read" in shown(move_of(Replication(subscribed=False)))
    nothing = Replication(subscribed=False, slot_exists=False)
    assert "app: not replicating yet (`cutover start`)" in shown(move_of(nothing))
