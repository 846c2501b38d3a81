"""Rewriting PgBouncer's [databases] entries: only the named ones, only host and port."""

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cutover.plan import PgBouncer, PgBouncerRepoint
from cutover.repoint.pgbouncer import rewrite

NAMES = st.from_regex(r"[a-z][a-z0-9_]{0,8}", fullmatch=True)
VALUES = st.builds(
    lambda host, port, db, extra: f"host={host} port={port} dbname={db}{extra}",
    st.sampled_from(["10.0.0.5", "db.internal", "127.0.0.1"]),
    st.integers(1, 65535),
    NAMES,
    st.sampled_from(["", " user=app password=s3cret", " pool_size=20"]),
)
OTHER = st.sampled_from(
    [
        "; a comment",
        "# another",
        "",
        "listen_port = 6432",
        "* = host=fallback",
        "pool_mode = session",
    ]
)


@given(
    st.dictionaries(NAMES, VALUES, min_size=1, max_size=6),
    st.lists(OTHER, max_size=4),
    st.data(),
)
def test_only_the_named_entries_change_and_only_their_host_and_port(
    entries: dict[str, str], noise: list[str], data: st.DataObject
) -> None:
    named = data.draw(st.sets(st.sampled_from(sorted(entries))))
    text = "[databases]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items())
    text += "\n".join(noise) + "\n[pgbouncer]\nlisten_addr = 127.0.0.1\n"
    text += "".join(f"{k} = not an entry\n" for k in entries)  # same names, other section
    new, found = rewrite(text, [*sorted(named), "absent"], "10.9.9.9", 5433)
    assert sorted(found) == sorted(named)
    entry_lines = len(entries) + 1  # the [databases] section ends with its entries
    pairs = zip(text.splitlines(), new.splitlines(), strict=True)
    for number, (old_line, new_line) in enumerate(pairs):
        name = old_line.split("=", 1)[0].strip()
        if number < entry_lines and name in named:
            assert "host=10.9.9.9" in new_line and "port=5433" in new_line
            rest_old = [w for w in old_line.split() if not w.startswith(("host=", "port="))]
            rest_new = [w for w in new_line.split() if not w.startswith(("host=", "port="))]
            assert rest_old == rest_new, (old_line, new_line, name)
        else:
            assert new_line == old_line
    assert rewrite(new, sorted(named), "10.9.9.9", 5433)[0] == new  # idempotent


def test_a_quoted_name_and_crlf_line_ends_are_kept() -> None:
    text = '[databases]\r\n"my ""odd"" db" = host=a port=1 dbname=x\r\n'
    new, found = rewrite(text, ['my "odd" db'], "b", 2)
    assert found == ['my "odd" db']
    assert new == '[databases]\r\n"my ""odd"" db" = host=b port=2 dbname=x\r\n'


def test_a_repoint_needs_each_pgbouncer_s_config() -> None:
    with pytest.raises(ValidationError, match=r"config \(pgbouncer.ini\) is needed"):
        PgBouncerRepoint(pgbouncers=[PgBouncer(port=6432)], databases=["app"])
