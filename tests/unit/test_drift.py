"""Schema drift from two catalogs, without servers: what differs, and the DDL that mends it."""

from hypothesis import given
from hypothesis import strategies as st

from cutover.pg.drift import Column, Drift, Kind, compare, mend, needs_values
from cutover.types import TableName

TABLES = [TableName("public", "a"), TableName('we"ird', "b c")]
names = st.sampled_from(["id", "v", "Extra Col", 'q"uote', "x"])
types = st.sampled_from(["integer", "bigint", "text", "character varying(20)", '"My Enum"'])
columns = st.builds(
    Column,
    name=names,
    type=types,
    not_null=st.booleans(),
    generated=st.just(False),
    default=st.one_of(st.none(), st.just("0")),
    missing=st.one_of(st.none(), st.just("5")),
)
tables = st.dictionaries(names, columns, max_size=5).map(
    lambda cols: {
        n: Column(n, c.type, c.not_null, c.generated, c.default, c.missing) for n, c in cols.items()
    }
)
catalogs = st.fixed_dictionaries(dict.fromkeys(TABLES, tables))


@given(catalog=catalogs)
def test_a_catalog_does_not_drift_from_itself(catalog: dict[TableName, dict[str, Column]]) -> None:
    assert compare(TABLES, catalog, catalog, carried=set(TABLES)) == []


@given(source=catalogs, target=catalogs)
def test_each_difference_is_found_once_and_only_differences(
    source: dict[TableName, dict[str, Column]], target: dict[TableName, dict[str, Column]]
) -> None:
    found = compare(TABLES, source, target)
    expected = set()
    for table in TABLES:
        ours, theirs = source[table], target[table]
        expected |= {(table, Kind.COLUMN_MISSING, n) for n in ours.keys() - theirs.keys()}
        expected |= {(table, Kind.COLUMN_EXTRA, n) for n in theirs.keys() - ours.keys()}
        expected |= {
            (table, Kind.COLUMN_TYPE, n)
            for n in ours.keys() & theirs.keys()
            if ours[n].type != theirs[n].type
        }
    got = [(d.table, d.kind, (d.source or d.target).name) for d in found]  # type: ignore[union-attr]
    assert len(got) == len(set(got))
    assert set(got) == expected


@given(source=catalogs)
def test_a_table_missing_or_not_carried_is_named_and_its_columns_are_not(
    source: dict[TableName, dict[str, Column]],
) -> None:
    target = {TABLES[1]: source[TABLES[1]]}  # the first is missing on the target
    found = compare(TABLES, source, target, carried=set())
    assert found == [Drift(TABLES[0], Kind.TABLE_MISSING), Drift(TABLES[1], Kind.NOT_REPLICATED)]
    assert [mend(d) for d in found] == [[], []]  # pg_dump's and the engine's to mend


@given(column=columns)
def test_a_new_column_is_added_with_the_value_old_rows_read(column: Column) -> None:
    drift = Drift(TABLES[1], Kind.COLUMN_MISSING, source=column)
    sent = [s.as_string(None) for s in mend(drift)]
    ident = '"' + column.name.replace('"', '""') + '"'
    assert sent[0].startswith(f'ALTER TABLE ONLY "we""ird"."b c" ADD COLUMN {ident} {column.type}')
    if column.missing is not None:
        assert f"DEFAULT '5'::{column.type}" in sent[0]
    assert sent[0].endswith(" NOT NULL") == (column.not_null and not needs_values(drift))
    if column.default is not None:
        assert sent[1].endswith(f"ALTER COLUMN {ident} SET DEFAULT 0")
    elif column.missing is not None:
        assert sent[1].endswith(f"ALTER COLUMN {ident} DROP DEFAULT")
    else:
        assert len(sent) == 1
    # Values no rule gives are copied from the source: a NOT NULL or defaulted column
    # without a fast default.
    assert needs_values(drift) == (
        column.missing is None and (column.not_null or column.default is not None)
    )


def test_a_changed_type_is_converted_and_a_column_only_on_the_target_dropped() -> None:
    old, new = Column("v", "integer"), Column("v", "bigint")
    changed = mend(Drift(TABLES[0], Kind.COLUMN_TYPE, source=new, target=old))
    assert [s.as_string(None) for s in changed] == [
        'ALTER TABLE ONLY "public"."a" ALTER COLUMN "v" TYPE bigint USING "v"::bigint'
    ]
    dropped = mend(Drift(TABLES[0], Kind.COLUMN_EXTRA, target=old))
    assert [s.as_string(None) for s in dropped] == ['ALTER TABLE ONLY "public"."a" DROP COLUMN "v"']
    assert Drift(TABLES[0], Kind.COLUMN_EXTRA, target=old).describe() == (
        '"public"."a": column "v" only on the target'
    )
