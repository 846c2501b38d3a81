"""Table names in the plan and on the command line: any name SQL allows, quoted as SQL quotes it."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cutover.pg.ident import quote
from cutover.plan import parse_table

names = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1,
    max_size=30,
)


@given(names, names)
def test_a_quoted_qualified_name_reads_back_exactly(schema: str, name: str) -> None:
    assert parse_table(quote((schema, name))) == (schema, name)


@given(names)
def test_a_quoted_bare_name_is_in_public(name: str) -> None:
    assert parse_table(quote(name)) == ("public", name)


def test_unquoted_names_are_taken_as_written() -> None:
    assert parse_table("sales.Orders") == ("sales", "Orders")
    assert parse_table("events") == ("public", "events")


@pytest.mark.parametrize("text", ["", "a.b.c", '"open', "a.", ".b", 'a"b'])
def test_what_is_not_a_table_name_is_refused(text: str) -> None:
    with pytest.raises(ValueError, match="not a table name"):
        parse_table(text)
