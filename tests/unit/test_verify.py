"""The arithmetic of verify's chunks: every integer key falls in the range its chunk reads back."""

from hypothesis import given
from hypothesis import strategies as st

from cutover.pg.checksum import chunk_range


def truncating_division(key: int, width: int) -> int:
    """What PostgreSQL's integer `key / width` gives: the quotient rounded towards zero."""
    quotient = abs(key) // width
    return quotient if key >= 0 else -quotient


@given(key=st.integers(-(2**63), 2**63 - 1), width=st.integers(1, 10**9))
def test_a_key_lies_in_the_range_of_its_chunk(key: int, width: int) -> None:
    chunk = truncating_division(key, width)
    low, high = chunk_range(chunk, width)
    assert low <= key <= high
    for other in (chunk - 1, chunk + 1):  # and in no neighbour's range
        other_low, other_high = chunk_range(other, width)
        assert not other_low <= key <= other_high


@given(chunk=st.integers(-(10**6), 10**6), width=st.integers(1, 10**6))
def test_the_chunks_ranges_follow_each_other_without_gap(chunk: int, width: int) -> None:
    _, high = chunk_range(chunk, width)
    low, _ = chunk_range(chunk + 1, width)
    assert low == high + 1
