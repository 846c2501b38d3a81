"""A dms move whose controller is killed (SIGKILL) at every step, and in every API call.

One move per command, walked: the command is killed at its first step (or
call), run again to be killed at the next, and so on, then run to the end.
A kill in an API call comes from the stand-in of Google's APIs: the request
took effect (or its operation was left running) and the answer never came
back. At the end the stand-in's record of requests shows every call that
changes something in effect once: a create sent again carries the same
requestId and makes nothing twice, an action is sent again only if it
changes nothing (verify), and none is skipped.
"""

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from cutover.engines.dms import resource_id
from cutover.lab import Lab
from cutover.runner import FAILPOINT
from cutover.steps import SwitchStep as S
from tests.conftest import Databases, Result, connect, move_of
from tests.gcp.backend import PglogicalJobs
from tests.gcp.standin import Request, Standin
from tests.integration.conftest import (
    Running,
    acked_on,
    can_login,
    dms_standin,
    ledger_of,
    ledger_of_plan,
    nothing_lost,
    set_replication,
)

pytestmark = pytest.mark.integration

# start's calls in order, each: method, what its path and query match, its operation left
# running (a create a rerun must send again) or done (the rerun must read that it is).
PROFILE = r"/connectionProfiles\?(.*&)?connectionProfileId=cutover-[^&]*-{}(&|$)"
START_CALLS = [
    ("POST", PROFILE.format("source"), True),
    ("POST", PROFILE.format("destination"), True),
    ("POST", r"/migrationJobs\?", True),
    ("POST", r":verify\?", False),
    ("POST", r":demoteDestination\?", False),
    ("POST", r":start\?", False),
]
# dms's switch: no copy_sequences_ahead (the destination takes no write before the
# promotion: copy_sequences follows it), no release_source (the job stays until cleanup),
# no start_fallback (DMS replicates one way), no copy_large_objects (not asked for);
# the new primary's backups turned on (no terraform section), its backup taken.
SWITCH_STEPS = [
    S.CHECK_READY,
    S.STOP_WRITERS,
    S.FENCE_SOURCE,
    S.WAIT_FOR_BARRIER,
    S.PROMOTE,
    S.COPY_SEQUENCES,
    S.ENABLE_TARGET_BACKUPS,
    S.REPOINT,
    S.START_WRITERS,
    S.BACK_UP_TARGET,
    S.REFRESH_MATERIALIZED_VIEWS,
    S.VERIFY_COUNTS,
    S.CHECK_WRITERS,
    S.WAIT_FOR_TARGET_BACKUP,
]
# The servers (and the stand-in's instance) show them done.
ADOPTED = {
    S.PROMOTE,
    S.COPY_SEQUENCES,
    S.ENABLE_TARGET_BACKUPS,
    S.REPOINT,
    S.BACK_UP_TARGET,
    S.WAIT_FOR_TARGET_BACKUP,
}


@pytest.fixture
def engine() -> str:
    """under_load's move, by DMS."""
    return "dms"


@pytest.fixture
def standin(lab: Lab, tmp_path: Path) -> Iterator[tuple[Standin, dict[str, Any]]]:
    """The lab-backed stand-in and the plan's dms section, served as long as the move lives."""
    with ExitStack() as stack:
        yield dms_standin(stack, lab, tmp_path)


@pytest.fixture
def plan_extra(standin: tuple[Standin, dict[str, Any]]) -> dict[str, Any]:
    """under_load's plan names the stand-in."""
    return {"dms": standin[1]}


def call(request: Request) -> str:
    """A request that changes something, named: method, collection or job, what it makes."""
    made = request.query.get("connectionProfileId") or request.query.get("migrationJobId")
    if made is not None:
        return f"{request.method} {request.path.rsplit('/', 1)[-1]}/{made}"
    return f"{request.method} {'/'.join(request.path.split('/')[-2:])}"


def changing(standin: Standin) -> list[Request]:
    """The requests received that are not reads."""
    with standin.lock:
        return [r for r in standin.requests if r.method != "GET"]


def interrupted(cutover: Callable[..., Result], plan: str, *, ask: bool) -> list[str]:
    """The steps a killed run left running: as `cutover status --json` names them (`ask`),
    or read from the ledger the same way, a command's start spared."""
    if not ask:
        records = ledger_of_plan(Path(plan))
        return [key for key, record in records.items() if record["status"] == "running"]
    status = cutover("status", "-p", plan, "--json")
    assert status.stdout.startswith("{"), status.stdout + status.stderr
    return list(json.loads(status.stdout)["interrupted"])


def test_start_killed_in_each_api_call_sends_each_once_when_run_again(
    lab: Lab,
    databases: Databases,
    write_plan: Callable[..., Path],
    cutover: Callable[..., Result],
    standin: tuple[Standin, dict[str, Any]],
) -> None:
    api, dms = standin
    db = databases.create()
    with connect(lab.server("source"), db) as conn:
        conn.execute(
            "CREATE TABLE items (id bigserial PRIMARY KEY, note text);"
            "INSERT INTO items (note) SELECT 'n' || g FROM generate_series(1, 5000) g"
        )
    plan = str(write_plan([db], engine="dms", dms=dms))
    prepared = cutover("prepare", "-p", plan)
    assert prepared.code == 0, prepared.stdout + prepared.stderr
    # The source's flags were on: only its backup was asked for.
    assert [call(r) for r in changing(api)] == ["POST lab-source/backupRuns"]
    del api.requests[:]

    for number, (method, target, running) in enumerate(START_CALLS, 1):
        api.kill(method, target, running=running)
        killed = cutover("start", "-p", plan, "--wait")
        assert killed.code == -9, killed.stdout + killed.stderr
        assert len(api.killed) == number  # killed in that call
        assert interrupted(cutover, plan, ask=number == 1) == [f"{db}/start.copy_data"]
    again = cutover("start", "-p", plan, "--wait")
    assert again.code == 0, again.stdout + again.stderr

    move = resource_id(move_of(Path(plan)))  # the job's name; the profiles' add -source...
    sent = changing(api)
    assert Counter(call(r) for r in sent) == {
        # Each create was killed with its operation running: sent again, with its requestId.
        f"POST connectionProfiles/{move}-source": 2,
        f"POST connectionProfiles/{move}-destination": 2,
        f"POST migrationJobs/{move}": 2,
        # verify changes nothing: the run after the kill in it verifies again.
        f"POST migrationJobs/{move}:verify": 2,
        f"POST migrationJobs/{move}:demoteDestination": 1,
        f"POST migrationJobs/{move}:start": 1,
    }
    for made in ("connectionProfiles", "migrationJobs"):
        ids = {(call(r), r.query["requestId"]) for r in sent if r.path.endswith(made)}
        assert len(ids) == len({c for c, _ in ids})  # one requestId per resource
    assert len(api.profiles) == 2 and len(api.jobs) == 1  # nothing made twice
    (job,) = api.jobs.values()
    assert (job["state"], job["phase"]) == ("RUNNING", "CDC")
    with connect(lab.server("target"), db) as conn:
        rows = conn.execute("SELECT count(*) AS n FROM items").fetchone()
        subscriptions = conn.execute("SELECT count(*) AS n FROM pglogical.subscription").fetchone()
    assert rows == {"n": 5000}
    assert subscriptions == {"n": 1}  # one job, started once


def test_switch_rolled_back_abandoned_and_killed_at_each_step_then_finished(
    lab: Lab,
    under_load: Running,
    standin: tuple[Standin, dict[str, Any]],
    cutover: Callable[..., Result],
) -> None:
    api, _ = standin
    plan = str(under_load.plan)
    move = resource_id(move_of(under_load.plan))
    # Each run before the promotion checks the lag again: no window to hold, eight times.
    data = yaml.safe_load(under_load.plan.read_text())
    data["thresholds"]["lag_window"] = "0s"
    under_load.plan.write_text(yaml.safe_dump(data))
    source_port = lab.server("source").port

    def back_on_the_source() -> None:
        """The fence lifted, the load writing on the source, DMS's job streaming on."""
        assert can_login(lab, under_load.role)
        before = acked_on(under_load, source_port)
        under_load.work.stop.wait(1.0)
        assert acked_on(under_load, source_port) > before + 30
        (job,) = api.jobs.values()
        assert (job["state"], job["phase"]) == ("RUNNING", "CDC")
        assert not [r for r in changing(api) if r.path.endswith(":promote")]

    def killed_at(step: S) -> None:
        killed = cutover(
            "switch", "-p", plan, "--yes", env={FAILPOINT: f"all/switch.{step}@applied"}
        )
        assert killed.code == -9, (step, killed.stdout + killed.stderr)
        assert interrupted(cutover, plan, ask=step is S.CHECK_READY) == [f"all/switch.{step}"]

    def release_when_waited_for() -> None:
        """Let the target's backup end once the switch is in the step that waits for it."""
        key = f"all/switch.{S.WAIT_FOR_TARGET_BACKUP}"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            record = ledger_of_plan(Path(plan)).get(key)
            if record is not None and record["status"] == "running":
                break
            time.sleep(0.1)
        api.held_backups.discard("lab-target")

    # A switch that fails before the promotion rolls back by itself: DMS's apply is held,
    # the barrier never arrives.
    assert isinstance(api.backend, PglogicalJobs)
    (run,) = api.backend.runs.values()
    set_replication(lab, under_load, enabled=False, subscription=run.name)
    failed = cutover("switch", "-p", plan, "--yes")
    assert failed.code == 1, failed.stdout + failed.stderr
    assert "did not confirm the barrier of" in failed.stderr and "undone" in failed.stderr
    set_replication(lab, under_load, enabled=True, subscription=run.name)
    back_on_the_source()

    # Killed after the fence, before the promotion: the switch is abandoned.
    for step in SWITCH_STEPS[: SWITCH_STEPS.index(S.FENCE_SOURCE) + 1]:
        killed_at(step)
    assert not can_login(lab, under_load.role)
    abandoned = cutover("switch", "-p", plan, "--abandon", "--yes")
    assert abandoned.code == 0, abandoned.stdout + abandoned.stderr
    back_on_the_source()

    # Then a switch from its first step, killed at each step from the barrier on.
    for step in SWITCH_STEPS[SWITCH_STEPS.index(S.WAIT_FOR_BARRIER) :]:
        if step is S.PROMOTE:  # first killed in the call: the job promoted, no answer
            api.kill("POST", r":promote\?")
            in_call = cutover("switch", "-p", plan, "--yes")
            assert in_call.code == -9, in_call.stdout + in_call.stderr
            assert interrupted(cutover, plan, ask=True) == ["all/switch.promote"]
        if step is S.BACK_UP_TARGET:  # killed in the call: the backup runs, no answer
            api.held_backups.add("lab-target")  # ...and goes on running until released
            api.kill("POST", r"/instances/lab-target/backupRuns", running=True)
            in_call = cutover("switch", "-p", plan, "--yes")
            assert in_call.code == -9, in_call.stdout + in_call.stderr
            assert interrupted(cutover, plan, ask=False) == ["all/switch.back_up_target"]
            continue  # the next run finds it asked for: adopted, never applied again
        if step is S.WAIT_FOR_TARGET_BACKUP:  # the backup ends while the switch waits for it
            threading.Thread(target=release_when_waited_for, daemon=True).start()
        killed_at(step)
    finished = cutover("switch", "-p", plan, "--yes")
    assert finished.code == 0, finished.stdout + finished.stderr

    records = {k: v for k, v in ledger_of(under_load).items() if k.startswith("all/switch.")}
    assert set(records) == {f"all/switch.{s}" for s in SWITCH_STEPS}  # every step dms has
    assert {r["status"] for r in records.values()} == {"done"}
    adopted = {k for k, r in records.items() if r["outcome"] == "adopted"}
    assert adopted == {f"all/switch.{s}" for s in ADOPTED}  # not done twice
    nothing_lost(lab, under_load)  # the application writes on the target

    cleaned = cutover("cleanup", "-p", plan, "--yes")
    assert cleaned.code == 0, cleaned.stdout + cleaned.stderr
    assert Counter(call(r) for r in changing(api)) == {
        f"POST connectionProfiles/{move}-source": 1,
        f"POST connectionProfiles/{move}-destination": 1,
        f"POST migrationJobs/{move}": 1,
        f"POST migrationJobs/{move}:verify": 1,
        f"POST migrationJobs/{move}:demoteDestination": 1,
        f"POST migrationJobs/{move}:start": 1,
        f"POST migrationJobs/{move}:promote": 1,
        "POST lab-source/backupRuns": 1,  # prepare's
        "PATCH instances/lab-target": 1,  # backups and point-in-time recovery on
        "POST lab-target/backupRuns": 1,  # the new primary's, killed in the call
        f"DELETE migrationJobs/{move}": 1,
        f"DELETE connectionProfiles/{move}-source": 1,  # the destination's went with the job
    }
    assert api.jobs == {} and api.profiles == {}
