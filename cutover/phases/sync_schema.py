"""sync-schema: make the target's moved tables like the source's, and carry the new ones.

A schema change on the source while a move streams (a column added, a type
changed, a table made) is not replicated: the target's apply stops at the
first row it cannot apply, or a new table stays behind. For one database:

1. create_missing_tables: each replicated table the target lacks, made there
   as pg_dump of the source defines it (keys, indexes, grants);
2. alter_columns: columns added, changed or dropped on the target as the
   source has them; a new column's existing rows get the value they read on
   the source (its default at the time it was added);
3. resume_apply: an apply worker that failed on the change starts again now
   (native's retries by itself within seconds; pglogical's may wait minutes);
4. carry_new_tables: the tables the replication does not carry yet are added
   to it: their rows are copied, then their changes stream.
"""

from collections.abc import Sequence
from functools import partial

from cutover import database
from cutover.database import Pool
from cutover.engines.base import Engine
from cutover.plan import Plan
from cutover.steps import Change, Phase, Step
from cutover.types import TableName


def phase(plan: Plan, servers: Pool, db: str, engine: Engine) -> Phase:
    """The sync-schema steps for database `db`."""

    def uncarried() -> list[TableName]:
        carried = set(engine.progress(db).tables)
        return [t for t in database.replicated_tables(servers, db) if str(t) not in carried]

    def carry_new_tables(*, dry_run: bool) -> Sequence[Change]:
        new = uncarried()
        return engine.carry(db, new, dry_run=dry_run) if new else []

    return Phase(
        "sync_schema",
        (
            Step(
                "create_missing_tables",
                partial(database.create_missing_tables, plan, servers, db),
                partial(database.pre_data_copied, servers, db),
            ),
            Step(
                "alter_columns",
                partial(database.alter_columns, servers, db),
                partial(database.columns_match, servers, db),
            ),
            Step(
                "resume_apply",
                partial(engine.resume_apply, db),
                lambda: not engine.resume_apply(db, dry_run=True),
            ),
            Step("carry_new_tables", carry_new_tables, lambda: not uncarried()),
        ),
    )
