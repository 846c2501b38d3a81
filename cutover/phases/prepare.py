"""prepare: make both sides ready to replicate one database.

1. enable_logical_decoding: `wal_level = logical` on the source (a restart is the
   one downtime of a move, so it is never done without being asked). With a
   `terraform` section the flags are Terraform's (phases/terraform.py, run first):
   this step only checks that the source decodes.
2. create_target_database: the database exists on the target.
3. create_source_barrier: `_cutover.barrier`, for the switch's proof of zero lag.
4. guard_source_ddl: only with `ddl_guard: true` in the plan, event triggers on
   the source that refuse DDL from every session but cutover's own until cleanup
   (a schema change during the move breaks its replication).
5. install_engine: what the engine needs on the source (pglogical: its extension,
   which the schema copy brings to the target).
6. create_replication_role: a role that may replicate and read, nothing more.
7. copy_schema: pg_dump the schema; restore its pre-data part on the target
   (tables, types, functions: no index yet, so the copy fills bare tables).
8. create_target_barrier: adopted when the schema copy brought it.
9. create_publication: every replicated table of the source (pglogical: a
   replication set of the tables and sequences, on the source's node).

An engine that copies the schema itself (`copies_schema`: DMS) makes the
target's database too, and wants it absent until then: prepare leaves the
target alone (no steps 2, 7 and 8; the barrier table comes with its copy).
"""

from collections.abc import Sequence
from functools import partial

from cutover import database, process
from cutover.database import Pool
from cutover.engines.base import Engine
from cutover.errors import PreconditionFailed
from cutover.plan import Plan
from cutover.steps import Change, Phase, Step
from cutover.types import Side


class Prepare:
    """The prepare of one database: each method is a step, or a step's probe."""

    def __init__(
        self, plan: Plan, servers: Pool, db: str, *, restart: bool, restart_timeout: float
    ) -> None:
        self.plan = plan
        self.servers = servers
        self.db = db
        self.restart = restart
        self.restart_timeout = restart_timeout

    def logical_decoding_on(self) -> bool:
        """wal_level = logical on the source."""
        return database.logical_decoding_on(self.servers)

    def enable_logical_decoding(self, *, dry_run: bool) -> Sequence[Change]:
        """ALTER SYSTEM; then a restart, only when asked for and the plan says how."""
        changes = [database.enable_logical_decoding(self.servers, dry_run=dry_run)]
        command = self.plan.source.restart
        if self.restart and command:
            changes.append(Change("source", process.shown(command)))
        if dry_run:
            return changes
        if not (self.restart and command):
            raise PreconditionFailed(
                "wal_level is now set to logical, and takes effect when the source restarts",
                hint="restart the source at a quiet moment (the one downtime of a move), then "
                "run prepare again; or give source.restart in the plan and run prepare "
                "--restart; on Cloud SQL set the flag cloudsql.logical_decoding=on",
            )
        database.restart_source(self.servers, command, timeout=self.restart_timeout)
        return changes

    def require_decoding(self, *, dry_run: bool) -> Sequence[Change]:
        """Refuse a source that does not decode: with Terraform, its flags are Terraform's."""
        if dry_run:
            return [Change("source", "check that it decodes, with the flags Terraform applied")]
        raise PreconditionFailed(
            "the source does not decode yet, and its flags are Terraform's to set",
            hint="run `cutover prepare --yes` to apply the plan of terraform_source_flags; if "
            "it was applied, the instance takes the flags when it restarts",
        )


def phase(
    plan: Plan,
    servers: Pool,
    db: str,
    engine: Engine,
    *,
    restart: bool = False,
    restart_timeout: float = 300.0,
) -> Phase:
    """The prepare steps for database `db`; with `restart`, the source may be restarted."""
    prepare = Prepare(plan, servers, db, restart=restart, restart_timeout=restart_timeout)
    guard: tuple[Step, ...] = ()
    if plan.ddl_guard:  # a step of its own only when asked for: a plan without it runs as before
        guard = (
            Step(
                "guard_source_ddl",
                partial(database.guard_source_ddl, plan, servers, db),
                partial(database.ddl_guard_exists, plan, servers, db),
            ),
        )
    target: tuple[Step, ...] = ()
    schema: tuple[Step, ...] = ()
    target_barrier: tuple[Step, ...] = ()
    if not engine.traits.copies_schema:
        target = (
            Step(
                "create_target_database",
                partial(database.create, servers, Side.TARGET, db),
                partial(database.exists, servers, Side.TARGET, db),
            ),
        )
        schema = (
            Step(
                "copy_schema",
                partial(database.copy_pre_data, plan, servers, db),
                partial(database.pre_data_copied, servers, db),
            ),
        )
        target_barrier = (
            Step(
                "create_target_barrier",
                partial(database.create_barrier_table, servers, Side.TARGET, db),
                partial(database.barrier_table_exists, servers, Side.TARGET, db),
            ),
        )
    by_api = engine.traits.source_settings_by_api
    decodes = engine.source_decodes if by_api else prepare.logical_decoding_on
    decoding = (
        Step(  # the flags are Terraform's (terraform_source_flags): only checked here
            "enable_logical_decoding",
            prepare.require_decoding,
            decodes,
            attempts=1,
        )
        if plan.terraform is not None
        else Step(  # Cloud SQL's flags, through its API
            "enable_logical_decoding",
            partial(engine.enable_decoding, restart=restart),
            decodes,
            attempts=1,
        )
        if by_api
        else Step(
            "enable_logical_decoding",
            prepare.enable_logical_decoding,
            prepare.logical_decoding_on,
            attempts=1,
        )
    )
    return Phase(
        "prepare",
        (
            decoding,
            *target,
            Step(
                "create_source_barrier",
                partial(database.create_barrier_table, servers, Side.SOURCE, db),
                partial(database.barrier_table_exists, servers, Side.SOURCE, db),
            ),
            *guard,
            Step("install_engine", partial(engine.install, db), partial(engine.installed, db)),
            Step(
                "create_replication_role",
                partial(engine.grant_access, db),
                partial(engine.access_granted, db),
            ),
            *schema,
            *target_barrier,
            Step(
                "create_publication",
                partial(engine.prepare_source, db),
                partial(engine.source_prepared, db),
            ),
        ),
    )
