"""The copy's order: a table after the tables it references, and no job waits on a later one."""

from hypothesis import given
from hypothesis import strategies as st

from cutover.pg.copy import Part, referenced_first
from cutover.types import TableName

TABLES = [TableName("public", f"t{i}") for i in range(6)]


def acyclic(references: set[tuple[TableName, TableName]]) -> bool:
    """No chain of references (a table's own left out) leads back to where it began."""
    edges = {(a, b) for a, b in references if a != b}
    remaining = {t for edge in edges for t in edge}
    while remaining:
        leaf = next(
            (t for t in remaining if not any(a == t and b in remaining for a, b in edges)), None
        )
        if leaf is None:
            return False
        remaining.discard(leaf)
    return True


@given(
    st.lists(
        st.tuples(st.sampled_from(TABLES), st.integers(1, 3), st.integers(1, 10**6)), max_size=8
    ),
    st.sets(st.tuples(st.sampled_from(TABLES), st.sampled_from(TABLES)), max_size=12),
)
def test_referenced_tables_come_first_and_waits_point_back(
    wanted: list[tuple[TableName, int, int]], references: set[tuple[TableName, TableName]]
) -> None:
    parts = []
    for table, count, size in {w[0]: w for w in wanted}.values():
        parts += [
            Part(table, ("id",), size, (i, i + 1) if count > 1 else None) for i in range(count)
        ]
    ordered, after = referenced_first(parts, references)
    assert sorted(ordered, key=id) == sorted(parts, key=id)  # the same parts
    position = {p.table: i for i, p in reversed(list(enumerate(ordered)))}
    for i, waits in after.items():
        assert all(j < i for j in waits)  # only on parts submitted before it: no deadlock
        assert all(ordered[j].table != ordered[i].table for j in waits)
    if acyclic(references):  # every reference is honoured when order can honour it
        for table, referenced in references:
            if table != referenced and table in position and referenced in position:
                assert position[referenced] < position[table]
