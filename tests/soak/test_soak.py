"""The soak in the suite: its generator's properties, its judge, and a few seeded runs.

`make soak N=50` runs many more seeds; these keep the generator, the judge and a
move of each engine under faults honest on every change.
"""

from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cutover.lab import Lab
from tests.conftest import Databases
from tests.soak import run
from tests.soak.scenario import START_STEPS, SWITCH_STEPS, Fault, Kind, generate

SEEDS = {"native": 241, "pglogical": 5}  # kills, restarts, cuts, a rollback; tenants; PgBouncer (5)


@given(st.integers(min_value=0, max_value=2**32))
def test_a_seed_draws_the_same_well_formed_scenario_every_time(seed: int) -> None:
    scenario = generate(seed)
    assert generate(seed) == scenario
    assert scenario.tables[0].kind in (Kind.IDENTITY, Kind.SERIAL)  # what children reference
    assert len({t.name for t in scenario.tables}) == len(scenario.tables)
    for injected in scenario.faults:
        if injected.fault is Fault.KILL_START:
            assert injected.step in START_STEPS[scenario.engine]
        if injected.fault is Fault.KILL_SWITCH:
            assert injected.step in SWITCH_STEPS
    assert not (scenario.has(Fault.KILL_SWITCH) and scenario.has(Fault.TIMEOUT_ROLLBACK))


def test_seeds_cover_both_engines_and_every_fault() -> None:
    drawn = [generate(seed) for seed in range(1, 51)]
    assert {s.engine for s in drawn} == {"native", "pglogical"}
    assert {f.fault for s in drawn for f in s.faults} == set(Fault)
    assert {s.tenants for s in drawn} == {0, 1, 2} and {s.pooled for s in drawn} == {False, True}


@given(st.lists(st.integers(0, 999), min_size=1, max_size=5), st.integers(0, 20))
def test_seed_lists_and_ranges_parse(singles: list[int], span: int) -> None:
    text = ",".join(map(str, singles)) + f",{1000}-{1000 + span}"
    assert run.seeds(text) == [*singles, *range(1000, 1001 + span)]


def test_only_connection_errors_near_a_restart_are_excused() -> None:
    restart = (datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp(),) * 2
    windows = [(restart[0], restart[1] + 1)]

    def error(second: int, code: str) -> str:
        at = datetime(2026, 1, 1, 12, 0, second, tzinfo=UTC).isoformat()
        return f"{at} load_01/7: [{code}] terminating connection"

    assert run.restarted(error(3, "57P01"), windows)
    assert not run.restarted(error(3, "42501"), windows)  # not what a restart causes
    assert not run.restarted(error(30, "57P01"), windows)  # long after it
    # Through PgBouncer: its answer while it waits to log in again, for server_login_retry.
    retry = error(15, "08P01").replace("terminating connection", "(server_login_retry)")
    assert run.restarted(retry, windows, pooled=True)
    assert not run.restarted(retry, windows)  # no PgBouncer: not what the application saw
    assert not run.restarted(error(15, "08P01"), windows, pooled=True)  # another 08P01
    assert not run.restarted(
        error(40, "08P01").replace("terminating connection", "(server_login_retry)"),
        windows,
        pooled=True,
    )


@pytest.mark.integration
@pytest.mark.parametrize("engine", sorted(SEEDS))
def test_a_seeded_move_under_faults_loses_nothing(
    lab: Lab, databases: Databases, tmp_path: Path, engine: str
) -> None:
    outcome = run.run(lab, databases, SEEDS[engine], tmp_path / "run")
    assert outcome.engine == engine
    assert outcome.problems == [], generate(SEEDS[engine]).describe()
    assert outcome.acknowledged > 500 and outcome.lost == 0 and outcome.duplicated == 0
    assert outcome.churned > 20  # the scenario's tables were written too
    assert outcome.pause is not None and outcome.pause < 5
