"""Named SQL statements shipped with cutover, loaded by name."""

from functools import cache
from importlib.resources import files

from psycopg import sql


@cache
def load(name: str) -> sql.SQL:
    """The statement in `queries/<name>.sql`."""
    text = files(__name__).joinpath(f"{name}.sql").read_text()
    # Shipped files, never user input: they may be treated as literal SQL.
    return sql.SQL(text)
