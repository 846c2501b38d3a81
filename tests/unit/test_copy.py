"""How the initial copy cuts a large table into page ranges."""

import itertools

from hypothesis import given
from hypothesis import strategies as st

from cutover.pg.copy import page_ranges


@given(pages=st.integers(0, 10_000_000), count=st.integers(1, 64))
def test_page_ranges_cover_every_page_once(pages: int, count: int) -> None:
    ranges = page_ranges(pages, count)
    assert 1 <= len(ranges) <= max(1, min(count, pages))
    assert ranges[0][0] == 0
    assert ranges[-1][1] is None  # the last range is open: pages added later are read too
    for (_, end), (first, _) in itertools.pairwise(ranges):
        assert end == first  # contiguous: no page skipped, none read twice
    for first, end in ranges[:-1]:
        assert end is not None and end > first


@given(pages=st.integers(1, 10_000_000), count=st.integers(2, 64))
def test_page_ranges_share_the_work_evenly(pages: int, count: int) -> None:
    bounded = [end - first for first, end in page_ranges(pages, count) if end is not None]
    assert len(set(bounded)) <= 1
