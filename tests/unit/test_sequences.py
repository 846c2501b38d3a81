"""Which target sequences are behind the source's, for any increment."""

from hypothesis import given
from hypothesis import strategies as st

from cutover.pg.sequences import State, behind

steps = st.integers(min_value=-1000, max_value=1000).filter(lambda n: n != 0)
values = st.integers(min_value=-(10**12), max_value=10**12)


@given(values, st.booleans(), steps)
def test_equal_states_are_not_behind(last_value: int, called: bool, step: int) -> None:
    state = State(last_value, called, step)
    assert behind({"s": state}, {"s": state}) == {}


@given(values, steps, st.integers(min_value=1, max_value=10**6))
def test_a_target_that_handed_out_more_values_is_ahead(
    last_value: int, step: int, more: int
) -> None:
    source = State(last_value, True, step)
    advanced = State(last_value + step * more, True, step)
    assert behind({"s": source}, {"s": advanced}) == {}
    assert behind({"s": advanced}, {"s": source}) == {"s": advanced}  # never moved back


@given(values, steps)
def test_a_fresh_sequence_is_behind_one_that_was_called(last_value: int, step: int) -> None:
    called, fresh = State(last_value, True, step), State(last_value, False, step)
    assert behind({"s": called}, {"s": fresh}) == {"s": called}
    assert behind({"s": fresh}, {"s": called}) == {}


@given(st.dictionaries(st.text(min_size=1), st.tuples(values, st.booleans(), steps)))
def test_only_what_is_behind_is_set_and_then_nothing_is(
    source: dict[str, tuple[int, bool, int]],
) -> None:
    states = {name: State(*s) for name, s in source.items()}
    late = behind(states, {})
    assert late == states  # missing on the target: every one
    target = dict(late)
    assert behind(states, target) == {}  # once set, nothing is behind


def test_a_sequence_missing_on_the_target_is_behind() -> None:
    assert behind({"s": State(1, True, 1)}, {}) == {"s": State(1, True, 1)}
