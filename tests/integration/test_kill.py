"""A controller killed (SIGKILL) at each step, then run again, finishes the move.

The kill comes at the worst moment: after the step changed the servers and
before the ledger recorded it. The second run must finish with nothing lost,
and adopt what the servers show instead of doing it twice.
"""

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import pytest

from cutover.lab import Lab
from cutover.runner import FAILPOINT
from cutover.steps import SwitchStep as S
from tests.conftest import Databases, Result, connect
from tests.integration.conftest import Running, ledger_of, nothing_lost

pytestmark = pytest.mark.integration

# Every step of a switch of the under_load plan; start_fallback only with --keep-fallback.
# (refresh_materialized_views is left out: the writers write by then; check_writers, the
# last, is in: the under_load plan's writer has a health probe, asked again when run again.)
NOT_HERE = {
    S.COPY_LARGE_OBJECTS,  # only with large_objects: copy
    S.REFRESH_MATERIALIZED_VIEWS,
    S.ENABLE_TARGET_BACKUPS,  # only with a terraform or a dms section
    S.BACK_UP_TARGET,  # only with a dms section (test_dms_kill.py)
    S.WAIT_FOR_TARGET_BACKUP,
    S.CHECK_FALLBACK,  # rollback's own
    S.FENCE_TARGET,
    S.UNFENCE_SOURCE,
}
SWITCH_STEPS = [s for s in S if s not in NOT_HERE]
# Steps whose effect the servers show: a resumed run adopts them.
OBSERVABLE = {S.COPY_SEQUENCES, S.PROMOTE, S.REPOINT, S.START_FALLBACK, S.RELEASE_SOURCE}


@contextmanager
def sequence_moving(lab: Lab, db: str) -> Iterator[None]:
    """A superuser job, which the fence spares, takes a ticket every 2 ms until the fence.

    The sequences are set ahead before the pause; without a sequence moving in
    the pause, copy_sequences finds nothing behind and is adopted, not applied.
    The job stops at the fence, so that the run again finds the sequence copied.
    """
    stop = threading.Event()

    def take() -> None:
        with connect(lab.server("source"), db) as conn:
            conn.autocommit = True
            fenced = "SELECT to_regclass('_cutover.fence') IS NOT NULL AS fenced"
            while not stop.wait(0.002) and not conn.execute(fenced).fetchone()["fenced"]:  # type: ignore[index]
                conn.execute("SELECT nextval('load_ticket_seq')")

    job = threading.Thread(target=take, daemon=True)
    job.start()
    try:
        yield
    finally:
        stop.set()
        job.join(timeout=10)


@pytest.mark.parametrize("step", SWITCH_STEPS)
def test_switch_killed_at_each_step_finishes_when_run_again(
    lab: Lab, under_load: Running, cutover: Callable[..., Result], step: str
) -> None:
    plan = str(under_load.plan)
    fallback = ["--keep-fallback"] if step is S.START_FALLBACK else []
    moving = sequence_moving(lab, under_load.db) if step is S.COPY_SEQUENCES else nullcontext()
    with moving:
        killed = cutover(
            "switch", "-p", plan, "--yes", *fallback, env={FAILPOINT: f"all/switch.{step}@applied"}
        )
    assert killed.code == -9, killed.stdout + killed.stderr
    status = json.loads(cutover("status", "-p", plan, "--json").stdout)
    assert status["interrupted"] == [f"all/switch.{step}"]

    again = cutover("switch", "-p", plan, "--yes", *fallback)
    assert again.code == 0, again.stdout + again.stderr
    record = ledger_of(under_load)[f"all/switch.{step}"]
    assert record["status"] == "done"
    if step in OBSERVABLE:
        assert record["outcome"] == "adopted"  # not done twice

    nothing_lost(lab, under_load)  # the application writes on the target again


# pglogical streams from the moment its copy commits: its start_streaming and
# wait_for_catchup are found done, never applied, so no kill can follow them.
START_STEPS = [
    *[("native", s) for s in ("copy_data", "restore_post_data", "start_streaming")],
    ("native", "wait_for_catchup"),
    *[("pglogical", s) for s in ("restore_post_data", "copy_data")],
]


@pytest.mark.parametrize(("engine", "step"), START_STEPS)
def test_start_killed_at_each_step_finishes_when_run_again(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    engine: str,
    step: str,
) -> None:
    db = databases.create()
    with connect(lab.server("source"), db) as conn:
        conn.execute(
            "CREATE TABLE items (id bigserial PRIMARY KEY, name text, price numeric);"
            "CREATE INDEX items_by_name ON items (name);"
            "INSERT INTO items (name, price) SELECT 'n' || g, g FROM generate_series(1, 50000) g"
        )
    plan = str(write_plan([db], move=f"kill_{step}_{engine}", engine=engine))
    assert cutover("prepare", "-p", plan).code == 0
    killed = cutover("start", "-p", plan, "--wait", env={FAILPOINT: f"{db}/start.{step}@applied"})
    # A target caught up before wait_for_catchup asked has nothing to wait for: the step
    # is adopted, and its work, after which the failpoint kills, never runs.
    caught_up = step == "wait_for_catchup" and f"adopted {db}/start.{step}" in killed.stdout
    assert killed.code == (0 if caught_up else -9), killed.stdout + killed.stderr

    again = cutover("start", "-p", plan, "--wait")
    assert again.code == 0, again.stdout + again.stderr
    if not caught_up:
        assert f"adopted {db}/start.{step}" in again.stdout  # the servers showed it done
    with connect(lab.server("target"), db) as conn:
        count = conn.execute("SELECT count(*) AS n FROM items").fetchone()
        index = conn.execute("SELECT to_regclass('items_by_name') IS NOT NULL AS ok").fetchone()
        subs = conn.execute(
            "SELECT count(*) AS n FROM pglogical.subscription"
            if engine == "pglogical"
            else "SELECT count(*) AS n FROM pg_subscription s JOIN pg_database d "
            "ON d.oid = s.subdbid WHERE d.datname = current_database()"
        ).fetchone()
    assert count == {"n": 50000}
    assert index == {"ok": True}
    assert subs == {"n": 1}  # one subscription: the second run did not make another
