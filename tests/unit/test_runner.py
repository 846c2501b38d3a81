"""The runner, on a small typed world: skip, adopt, resume, retry, undo, dry run."""

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from cutover.errors import Interrupted, PreconditionFailed, Retryable, StepFailed
from cutover.ledger import FileStore, Journal
from cutover.runner import Runner
from cutover.steps import Change, Outcome, Phase, Step, StepStatus


@dataclass
class World:
    """Facts that steps make true, and a log of every apply and undo."""

    facts: set[str] = field(default_factory=set)
    calls: list[str] = field(default_factory=list)
    fail: dict[str, BaseException] = field(default_factory=dict)

    def step(self, name: str, *, probe: bool = True, **kwargs: object) -> Step:
        def apply(*, dry_run: bool) -> Sequence[Change]:
            if dry_run:
                return [Change("world", f"make {name}")]
            self.calls.append(name)
            if name in self.fail:
                raise self.fail.pop(name)
            self.facts.add(name)
            return [Change("world", f"made {name}")]

        def undo(*, dry_run: bool) -> Sequence[Change]:
            self.calls.append(f"undo {name}")
            self.facts.discard(name)
            return []

        return Step(
            name,
            apply,
            (lambda: name in self.facts) if probe else None,
            undo=undo,
            **kwargs,  # type: ignore[arg-type]
        )


def runner(tmp_path: Path, *, dry_run: bool = False) -> tuple[Runner, Journal, list[float]]:
    journal = Journal(FileStore(tmp_path, "m"), move="m")
    sleeps: list[float] = []
    return Runner(journal, move="m", dry_run=dry_run, sleep=sleeps.append), journal, sleeps


def test_every_step_is_applied_in_order_and_recorded(tmp_path: Path) -> None:
    world = World()
    phase = Phase("p", (world.step("a"), world.step("b"), world.step("c")))
    run, journal, _ = runner(tmp_path)
    reports = run.run(phase, scope="db")
    assert world.calls == ["a", "b", "c"]
    assert [r.outcome for r in reports] == [Outcome.APPLIED] * 3
    assert [r.changes[0].action for r in reports] == ["made a", "made b", "made c"]
    assert all(journal.is_done(f"db/p.{n}") for n in "abc")


def test_done_steps_are_skipped_on_the_next_run(tmp_path: Path) -> None:
    world = World()
    phase = Phase("p", (world.step("a"), world.step("b", probe=False)))
    runner(tmp_path)[0].run(phase, scope="db")
    world.calls.clear()
    reports = runner(tmp_path)[0].run(phase, scope="db")
    assert world.calls == []
    assert [r.outcome for r in reports] == [Outcome.SKIPPED, Outcome.SKIPPED]


def test_what_the_world_already_shows_is_adopted_not_repeated(tmp_path: Path) -> None:
    world = World(facts={"a"})
    run, journal, _ = runner(tmp_path)
    reports = run.run(Phase("p", (world.step("a"), world.step("b"))), scope="db")
    assert world.calls == ["b"]
    assert reports[0].outcome is Outcome.ADOPTED
    record = journal.get("db/p.a")
    assert record is not None and record.outcome is Outcome.ADOPTED


def test_a_step_undone_behind_the_ledgers_back_is_applied_again(tmp_path: Path) -> None:
    world = World()
    phase = Phase("p", (world.step("a"),))
    runner(tmp_path)[0].run(phase, scope="db")
    world.facts.clear()
    assert runner(tmp_path)[0].run(phase, scope="db")[0].outcome is Outcome.APPLIED
    assert world.calls == ["a", "a"]


def test_after_a_step_raised_a_new_run_resumes_there(tmp_path: Path) -> None:
    world = World(fail={"c": PreconditionFailed("c is not ready", hint="make c ready")})
    phase = Phase("p", tuple(world.step(n) for n in "abcd"))
    run, journal, _ = runner(tmp_path)
    with pytest.raises(StepFailed) as caught:
        run.run(phase, scope="db")
    assert caught.value.message == "db/p.c: c is not ready"
    assert caught.value.hint == "make c ready"
    failed = journal.get("db/p.c")
    assert failed is not None and failed.status is StepStatus.FAILED
    assert journal.get("db/p.d") is None

    runner(tmp_path)[0].run(phase, scope="db")
    assert world.calls == ["a", "b", "c", "c", "d"]  # a and b were not repeated


def test_a_bug_keeps_its_traceback_but_is_recorded(tmp_path: Path) -> None:
    world = World(fail={"a": ZeroDivisionError("division by zero")})
    run, journal, _ = runner(tmp_path)
    with pytest.raises(ZeroDivisionError):
        run.run(Phase("p", (world.step("a"),)), scope="db")
    record = journal.get("db/p.a")
    assert record is not None and record.error == "ZeroDivisionError: division by zero"


def test_retryable_errors_are_retried_with_their_delay(tmp_path: Path) -> None:
    world = World(fail={"a": Retryable("lock wait", hint="", delay=0.5)})
    run, _journal, sleeps = runner(tmp_path)
    reports = run.run(Phase("p", (world.step("a"),)), scope="db")
    assert world.calls == ["a", "a"]
    assert sleeps == [0.5]
    assert reports[0].outcome is Outcome.APPLIED


def test_retries_stop_after_the_steps_attempts(tmp_path: Path) -> None:
    calls = 0

    def always_busy(*, dry_run: bool) -> Sequence[Change]:
        nonlocal calls
        calls += 1
        raise Retryable("busy", hint="later", delay=1.0)

    run, _, sleeps = runner(tmp_path)
    with pytest.raises(StepFailed):
        run.run(Phase("p", (Step("busy", always_busy, attempts=4),)), scope="db")
    assert calls == 4 and sleeps == [1.0, 1.0, 1.0]


def test_a_failing_phase_that_undoes_runs_the_undos_in_reverse(tmp_path: Path) -> None:
    world = World(fail={"c": PreconditionFailed("timeout", hint="h")})
    phase = Phase("switch", tuple(world.step(n) for n in "abc"), undo_on_failure=True)
    run, journal, _ = runner(tmp_path)
    with pytest.raises(StepFailed) as caught:
        run.run(phase, scope="db")
    # c may have half happened: its own undo runs first (undos are idempotent).
    assert world.calls == ["a", "b", "c", "undo c", "undo b", "undo a"]
    assert world.facts == set()
    assert "undone" in caught.value.message
    record = journal.get("db/switch.a")
    assert record is not None and record.status is StepStatus.UNDONE


def test_after_a_rollback_the_next_run_checks_every_step_again(tmp_path: Path) -> None:
    world = World(fail={"c": PreconditionFailed("timeout", hint="h")})
    check = world.step("check", probe=False)  # no undo of its own effect, no probe
    steps = (Step(check.name, check.apply), world.step("b"), world.step("c"))
    phase = Phase("switch", steps, undo_on_failure=True)
    with pytest.raises(StepFailed):
        runner(tmp_path)[0].run(phase, scope="db")
    world.calls.clear()
    reports = runner(tmp_path)[0].run(phase, scope="db")
    assert world.calls == ["check", "b", "c"]
    assert [r.outcome for r in reports] == [Outcome.APPLIED] * 3


def test_nothing_is_undone_past_the_point_of_no_return(tmp_path: Path) -> None:
    world = World(fail={"c": PreconditionFailed("repoint failed", hint="h")})
    steps = (world.step("a"), world.step("b", point_of_no_return=True), world.step("c"))
    run, _, _ = runner(tmp_path)
    with pytest.raises(StepFailed) as caught:
        run.run(Phase("switch", steps, undo_on_failure=True), scope="db")
    assert world.calls == ["a", "b", "c"]
    assert "past the point of no return" in caught.value.message


def test_a_dry_run_applies_nothing_and_writes_no_ledger(tmp_path: Path) -> None:
    world = World(facts={"a"})
    run, _, _ = runner(tmp_path, dry_run=True)
    reports = run.run(Phase("p", (world.step("a"), world.step("b"))), scope="db")
    assert world.calls == []
    assert [r.outcome for r in reports] == [Outcome.ADOPTED, Outcome.PLANNED]
    assert reports[1].changes == (Change("world", "make b"),)
    assert list(tmp_path.iterdir()) == []


def test_past_the_point_of_no_return_earlier_steps_are_never_run_again(tmp_path: Path) -> None:
    world = World(fail={"after": PreconditionFailed("killed here", hint="h")})
    steps = (
        world.step("copy"),
        world.step("promote", point_of_no_return=True),
        world.step("after"),
    )
    phase = Phase("switch", steps, undo_on_failure=True)
    with pytest.raises(StepFailed):
        runner(tmp_path)[0].run(phase, scope="db")
    world.facts.discard("copy")  # the world moved on: copy's probe now says "not done"
    world.calls.clear()
    reports = runner(tmp_path)[0].run(phase, scope="db")
    assert world.calls == ["after"]
    assert [r.outcome for r in reports] == [Outcome.SKIPPED, Outcome.SKIPPED, Outcome.APPLIED]


def test_an_interrupt_rolls_the_phase_back_and_says_so(tmp_path: Path) -> None:
    world = World(fail={"c": KeyboardInterrupt()})
    steps = tuple(world.step(n) for n in "abc")
    # The connections the step was interrupted in are let go before anything is undone.
    reset = lambda: world.calls.append("reset")  # noqa: E731
    phase = Phase("switch", steps, undo_on_failure=True, after_interrupt=reset)
    run, journal, _ = runner(tmp_path)
    with pytest.raises(Interrupted) as caught:
        run.run(phase, scope="db")
    assert caught.value.exit_code == 130
    assert caught.value.message.startswith("db/switch.c: interrupted (Ctrl-C or SIGTERM)")
    assert world.calls == ["a", "b", "c", "reset", "undo c", "undo b", "undo a"]
    record = journal.get("db/switch.c")
    assert record is not None and record.status is StepStatus.FAILED
    # A step that fails, not interrupted, keeps its connections.
    world = World(fail={"b": StepFailed("no", hint="h")})
    failing = Phase("switch", tuple(world.step(n) for n in "ab"), undo_on_failure=True)
    with pytest.raises(StepFailed):
        runner(tmp_path / "2")[0].run(replace(failing, after_interrupt=reset), scope="db")
    assert "reset" not in world.calls
