"""Whether the target's sequences are at or ahead of the source's, for any increment."""

from hypothesis import given
from hypothesis import strategies as st

from cutover.pg.sequences import at_or_ahead

steps = st.integers(min_value=-1000, max_value=1000).filter(lambda n: n != 0)
states = st.tuples(st.integers(min_value=-(10**12), max_value=10**12), st.booleans())


@given(states, steps)
def test_equal_states_are_at(state: tuple[int, bool], step: int) -> None:
    assert at_or_ahead({"s": state}, {"s": state}, {"s": step})


@given(states, steps, st.integers(min_value=1, max_value=10**6))
def test_a_target_that_handed_out_more_values_is_ahead(
    state: tuple[int, bool], step: int, more: int
) -> None:
    last_value, _ = state
    advanced = (last_value + step * more, True)
    assert at_or_ahead({"s": advanced}, {"s": (last_value, True)}, {"s": step})
    assert not at_or_ahead({"s": (last_value, True)}, {"s": advanced}, {"s": step})


@given(states, steps)
def test_a_fresh_sequence_is_behind_one_that_was_called(state: tuple[int, bool], step: int) -> None:
    last_value, _ = state
    assert not at_or_ahead({"s": (last_value, False)}, {"s": (last_value, True)}, {"s": step})
    assert at_or_ahead({"s": (last_value, True)}, {"s": (last_value, False)}, {"s": step})


def test_a_sequence_missing_on_the_target_is_not_copied() -> None:
    assert not at_or_ahead({}, {"s": (1, True)}, {"s": 1})
