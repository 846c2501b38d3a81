"""What an engine declares shapes the phases: no phase asks which engine it holds."""

import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cutover.database import Pool
from cutover.engines.base import Traits
from cutover.engines.postgres import PerDatabase, Replication
from cutover.errors import PreconditionFailed, StepFailed
from cutover.phases import prepare, start, switch
from cutover.plan import LargeObjects, Plan, TerraformModule
from cutover.steps import Change, Phase, Step
from cutover.steps import SwitchStep as S


def declared(traits: Traits, the_plan: Plan) -> PerDatabase:
    """An engine with these traits; building a phase asks nothing of its replication."""

    def replication(db: str) -> Replication:
        raise AssertionError(f"replication of {db} asked while phases were built")

    return PerDatabase("declared", traits, the_plan, Pool({}), replication)


def plan(tmp_path: Path, large_objects: LargeObjects) -> Plan:
    server = {"host": "127.0.0.1", "port": 1, "user": "u"}
    return Plan.model_validate(
        {
            "move": "m",
            "source": server,
            "target": {**server, "port": 2},
            "databases": ["app"],
            "large_objects": large_objects,
            "state_dir": str(tmp_path),
        }
    )


def names(phase: Phase) -> list[str]:
    return [step.name for step in phase.steps]


all_traits = st.builds(Traits, st.booleans(), st.booleans(), st.booleans(), st.booleans())


@given(traits=all_traits, large=st.sampled_from(LargeObjects))
def test_the_switch_follows_the_engines_traits(traits: Traits, large: LargeObjects) -> None:
    the_plan = plan(Path("/nonexistent"), large)
    built = switch.phase(the_plan, Pool({}), declared(traits, the_plan))
    steps = names(built)
    assert (S.COPY_SEQUENCES in steps) is not traits.sets_sequences_at_promote
    assert (S.COPY_LARGE_OBJECTS in steps) is (large is LargeObjects.COPY)
    promote = steps.index(S.PROMOTE)
    writes = [s for s in (S.COPY_SEQUENCES, S.COPY_LARGE_OBJECTS) if s in steps]
    for step in writes:  # after the fence and the barrier, before the writers start
        assert steps.index(S.WAIT_FOR_BARRIER) < steps.index(step) < steps.index(S.START_WRITERS)
        assert (steps.index(step) > promote) is traits.target_read_only_until_promote
    # Sequences set ahead, writers still writing, only where the target takes them then.
    ahead = not traits.sets_sequences_at_promote and not traits.target_read_only_until_promote
    assert (S.COPY_SEQUENCES_AHEAD in steps) is ahead
    paused = [s for s in steps if s != S.COPY_SEQUENCES_AHEAD]
    assert paused[:4] == [S.CHECK_READY, S.STOP_WRITERS, S.FENCE_SOURCE, S.WAIT_FOR_BARRIER]
    # The counts compare the barrier's snapshots once the writers are back.
    assert (
        steps.index(S.START_WRITERS) < steps.index(S.VERIFY_COUNTS) < steps.index(S.CHECK_WRITERS)
    )


@pytest.mark.parametrize("copies_schema", [False, True])
@pytest.mark.parametrize("keys_before_copy", [False, True])
def test_prepare_and_start_leave_the_schema_to_an_engine_that_copies_it(
    tmp_path: Path, copies_schema: bool, keys_before_copy: bool
) -> None:
    the_plan = plan(tmp_path, LargeObjects.FAIL)
    traits = Traits(keys_before_copy=keys_before_copy, copies_schema=copies_schema)
    engine = declared(traits, the_plan)
    prepared = names(prepare.phase(the_plan, Pool({}), "app", engine))
    started = names(start.phase(the_plan, Pool({}), "app", engine))
    assert ("copy_schema" in prepared) is not copies_schema
    # The engine that copies the schema makes the target database too: prepare leaves it.
    assert ("create_target_database" in prepared) is not copies_schema
    assert ("create_target_barrier" in prepared) is not copies_schema
    if copies_schema:
        assert started[0] == "copy_data" and "restore_post_data" not in started
    elif keys_before_copy:
        assert started[:2] == ["restore_post_data", "copy_data"]
    else:
        assert started[:2] == ["copy_data", "restore_post_data"]
    assert started[-3:] == ["start_streaming", "wait_for_catchup", "refresh_materialized_views"]


@pytest.mark.parametrize("read_only", [False, True])
def test_start_refreshes_views_only_on_a_target_that_takes_writes(
    tmp_path: Path, read_only: bool
) -> None:
    the_plan = plan(tmp_path, LargeObjects.FAIL)
    engine = declared(Traits(target_read_only_until_promote=read_only), the_plan)
    started = names(start.phase(the_plan, Pool({}), "app", engine))
    assert ("refresh_materialized_views" in started) is not read_only


@pytest.mark.parametrize("by_api", [False, True])
def test_with_terraform_the_flags_are_terraforms_and_the_target_backups_come_after_writers(
    tmp_path: Path, by_api: bool
) -> None:
    """prepare only checks the source decodes (no API call, no ALTER SYSTEM); the switch turns
    the target's backups on once the writers are back, before it checks them."""
    section = {"directory": str(tmp_path), "source_address": "terraform_data.source"}
    the_plan = plan(tmp_path, LargeObjects.FAIL).model_copy(
        update={"terraform": TerraformModule.model_validate(section)}
    )
    engine = declared(Traits(source_settings_by_api=by_api), the_plan)
    decoding = prepare.phase(the_plan, Pool({}), "app", engine).steps[0]
    assert decoding.name == "enable_logical_decoding"
    with pytest.raises(PreconditionFailed) as refused:
        decoding.apply(dry_run=False)
    assert refused.value.message == (
        "the source does not decode yet, and its flags are Terraform's to set"
    )
    assert [c.action for c in decoding.apply(dry_run=True)] == [
        "check that it decodes, with the flags Terraform applied"
    ]
    steps = names(switch.phase(the_plan, Pool({}), engine))
    assert (
        steps.index(S.START_WRITERS)
        < steps.index(S.VERIFY_COUNTS)
        < steps.index(S.ENABLE_TARGET_BACKUPS)
        < steps.index(S.CHECK_WRITERS)
    )
    without = plan(tmp_path, LargeObjects.FAIL)
    assert S.ENABLE_TARGET_BACKUPS not in names(switch.phase(without, Pool({}), engine))


class Halting:
    """A database's replication whose halt takes `seconds`, and may fail."""

    def __init__(self, db: str, seconds: float, failing: str | None, log: list[str]) -> None:
        self.db, self.seconds, self.failing, self.log = db, seconds, failing, log

    def halt(self, *, dry_run: bool) -> list[Change]:
        time.sleep(self.seconds)
        self.log.append(self.db)
        if self.db == self.failing:
            raise StepFailed(f"{self.db} did not stop", hint="")
        return [Change(self.db, "halted")]


def promoting(tmp_path: Path, traits: Traits, failing: str | None = None) -> tuple[Step, list[str]]:
    """The switch's promote step over six databases whose halts take 0.1 s each."""
    the_plan = plan(tmp_path, LargeObjects.FAIL).model_copy(
        update={"databases": [f"tenant_{i}" for i in range(6)]}
    )
    log: list[str] = []
    engine = PerDatabase(
        "declared",
        traits,
        the_plan,
        Pool({}),
        lambda db: Halting(db, 0.1, failing, log),  # type: ignore[arg-type,return-value]
    )
    built = switch.phase(the_plan, Pool({}), engine)
    return next(s for s in built.steps if s.name == S.PROMOTE), log


@pytest.mark.parametrize("apart", [True, False])
def test_databases_that_replicate_apart_are_promoted_together(tmp_path: Path, apart: bool) -> None:
    step, log = promoting(tmp_path, Traits(databases_apart=apart))
    began = time.monotonic()
    changes = step.apply(dry_run=False)
    took = time.monotonic() - began
    # Reported in the plan's order however they ended.
    assert [c.where for c in changes] == [f"tenant_{i}" for i in range(6)]
    if apart:
        assert took < 0.45  # six halts of 0.1 s, up to pg.connect.AT_ONCE at a time
    else:
        assert took >= 0.6 and log == [f"tenant_{i}" for i in range(6)]


def test_a_database_that_fails_its_promotion_is_raised_once_every_other_has_ended(
    tmp_path: Path,
) -> None:
    step, log = promoting(tmp_path, Traits(), failing="tenant_2")
    with pytest.raises(StepFailed, match="tenant_2 did not stop"):
        step.apply(dry_run=False)
    assert sorted(log) == [f"tenant_{i}" for i in range(6)]
