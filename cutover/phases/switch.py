"""switch: move the writes from the source to the target.

1. check_ready: every table copied; lag under max_switch_lag for lag_window;
   apply commits made synchronous so the barrier is confirmed within ms.
2. stop_writers: tier by tier, each tier drained before the next.
3. fence_source: the application's roles lose LOGIN, their sessions end; a
   session still writing afterwards (a superuser, a role left out) aborts.
4. wait_for_barrier: a marker row committed after the fence; the target must
   have applied it and the slot confirmed its position: zero lag, proven.
5. copy_sequences: each sequence's real state, source to target.
   copy_large_objects (with `large_objects: copy`): every large object, same
   OID, owner and privileges; those the source no longer has are deleted.
6. verify_counts: exact row counts of every table, both sides at once.
7. promote: the subscription ends and its slot is dropped (point of no return).
8. repoint: connection strings now name the target.
9. start_writers: tiers in reverse order, now writing to the target.
10. refresh_materialized_views: the views populated on the source, refreshed
    on the target with the writes made since the copy; after the pause,
    CONCURRENTLY where a unique index allows it.

A failure in steps 1-7 rolls back by itself: the fence is lifted and the
writers start again on the source, which keeps replicating.
"""

import time
import uuid
from collections.abc import Callable, Sequence

from cutover import preflight, verify
from cutover.engines.base import Engine
from cutover.errors import PreconditionFailed, StepFailed
from cutover.pg import fence, large_objects, matviews, replication, sequences
from cutover.pg.connect import Pool
from cutover.plan import LargeObjects, Plan
from cutover.repoint import repoint_for
from cutover.steps import Change, Phase, Step
from cutover.writers import Writer, writer_for

SCOPE = "all"
BARRIER_POLL = 0.01


class Switch:
    """The switch of one move: each method is a step, or a step's probe or undo."""

    def __init__(
        self,
        plan: Plan,
        pool: Pool,
        engines: dict[str, Engine],
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        fallback: dict[str, Engine] | None = None,
    ) -> None:
        self.fallback = fallback or {}
        self.plan = plan
        self.pool = pool
        self.engines = engines
        self.limits = plan.thresholds
        self.tiers = [[writer_for(spec) for spec in tier] for tier in plan.tiers()]
        self.repoints = [repoint_for(spec, plan.databases) for spec in plan.repoint]
        self.ours = [plan.source.user, replication.object_name(plan.move)]
        self.clock = clock
        self.sleep = sleep

    def check_ready(self, *, dry_run: bool) -> Sequence[Change]:
        """Copy finished, apply commits synchronous, lag under the limit for the window."""
        changes: list[Change] = []
        for db, engine in self.engines.items():
            if not engine.subscription_exists() or not engine.progress().done:
                raise PreconditionFailed(
                    f"{db}: the initial copy has not finished",
                    hint="run `cutover start --wait` first",
                )
            if not engine.ready_to_switch():
                changes += engine.prepare_switch(dry_run=dry_run)
        if self.fallback:
            self._check_fallback_possible()
        if self.plan.large_objects is LargeObjects.COPY:
            self._check_large_object_roles()
        if dry_run:
            return [*changes, Change("source", f"lag under {self.limits.max_switch_lag} B held")]
        deadline = self.clock() + self.limits.lag_window
        while True:
            for db, engine in self.engines.items():
                self._check_lag(db, engine)
            if self.clock() >= deadline:
                return changes
            self.sleep(min(1.0, max(0.0, deadline - self.clock())))

    def _check_fallback_possible(self) -> None:
        """Reverse replication starts after the promotion: what it needs is checked before."""
        problems = preflight.fallback_problems(
            self.plan, self.pool.get("source"), self.pool.get("target")
        )
        if problems:
            raise PreconditionFailed(
                "--keep-fallback cannot replicate back to the source: " + "; ".join(problems),
                hint="fix the settings (they need a restart), or switch without --keep-fallback",
            )

    def _check_large_object_roles(self) -> None:
        """The copy gives each object its owner and grants: those roles must exist first."""
        for db in self.engines:
            missing = large_objects.missing_roles(
                self.pool.get("source", db), self.pool.get("target")
            )
            if missing:
                raise PreconditionFailed(
                    f"{db}: roles that own or are granted large objects do not exist on the "
                    "target: " + ", ".join(missing),
                    hint="create them on the target (`cutover check` prints the statements)",
                )

    def _check_lag(self, db: str, engine: Engine) -> None:
        engine.heartbeat()
        slot = engine.slot()
        if slot is None:
            raise PreconditionFailed(
                f"{db}: the replication slot is missing on the source",
                hint="see `cutover status`; the move cannot switch without it",
            )
        if slot.lag_bytes > self.limits.max_switch_lag:
            raise PreconditionFailed(
                f"{db}: lag is {slot.lag_bytes} bytes, above max_switch_lag "
                f"({self.limits.max_switch_lag} bytes)",
                hint="wait until the target catches up (`cutover status --watch`)",
            )

    def stop_writers(self, *, dry_run: bool) -> Sequence[Change]:
        """Tier by tier; each tier drained before the next stops."""
        changes: list[Change] = []
        for tier in self.tiers:
            for writer in tier:
                changes += writer.stop(dry_run=dry_run)
            if not dry_run:
                self._wait_drained(tier)
        return changes

    def _wait_drained(self, tier: list[Writer]) -> None:
        deadline = self.clock() + self.limits.drain_timeout
        while not all(writer.is_drained() for writer in tier):
            if self.clock() > deadline:
                raise StepFailed(
                    f"writers {', '.join(w.name for w in tier)} did not drain within "
                    f"{self.limits.drain_timeout:g} s",
                    hint="raise thresholds.drain_timeout, or see why they keep writing",
                )
            self.sleep(0.05)

    def start_writers(self, *, dry_run: bool) -> Sequence[Change]:
        """Tiers in reverse order."""
        changes: list[Change] = []
        for tier in reversed(self.tiers):
            for writer in tier:
                changes += writer.start(dry_run=dry_run)
        return changes

    def fence_source(self, *, dry_run: bool) -> Sequence[Change]:
        """No LOGIN for the application's roles, their sessions ended, nobody left writing."""
        conn = self.pool.get("source", self.plan.databases[0])  # it holds the fence's record
        roles = fence.roles_to_fence(conn, named=self.plan.fence.roles, keep=self.ours)
        changes = fence.fence(
            conn, roles, self.plan.move, read_only=self.plan.fence.read_only, dry_run=dry_run
        )
        if dry_run:
            return changes
        deadline = self.clock() + 2.0  # terminated sessions take a moment to go
        while writing := fence.sessions_writing(
            conn, allowed=self.ours, databases=self.plan.databases
        ):
            if self.clock() > deadline:
                raise StepFailed(
                    "sessions still write on the source after the fence: " + ", ".join(writing),
                    hint="a superuser or a role outside fence.roles is writing; stop it or "
                    "fence it, then switch again",
                )
            self.sleep(0.02)
        return changes

    def unfence_source(self, *, dry_run: bool) -> Sequence[Change]:
        """Give LOGIN back to every role this move fenced."""
        return fence.unfence(
            self.pool.get("source", self.plan.databases[0]), self.plan.move, dry_run=dry_run
        )

    def wait_for_barrier(self, *, dry_run: bool) -> Sequence[Change]:
        """A marker committed after the fence, applied on the target, confirmed by the slot."""
        if dry_run:
            return [
                Change(f"source/{db}", "INSERT INTO _cutover.barrier ...") for db in self.engines
            ]
        deadline = self.clock() + self.limits.switch_timeout
        markers = {}
        for db, engine in self.engines.items():
            token = uuid.uuid4().hex
            markers[db] = (token, engine.write_barrier(token))
        pending = dict(markers)
        while pending:
            for db, (token, lsn) in list(pending.items()):
                if self.engines[db].barrier_reached(token, lsn):
                    del pending[db]
            if pending and self.clock() > deadline:
                raise StepFailed(
                    "the target did not confirm the barrier within "
                    f"{self.limits.switch_timeout:g} s: {', '.join(pending)}",
                    hint="replication is slow or stopped (`cutover status`); the switch "
                    "rolled back and the source is writable again",
                )
            if pending:
                self.sleep(BARRIER_POLL)
        return [
            Change(f"target/{db}", f"barrier at {lsn} applied") for db, (_, lsn) in markers.items()
        ]

    def _sequence_values(self) -> dict[str, tuple[sequences.Values, sequences.Values]]:
        values = {}
        for db in self.engines:
            names = sequences.names(self.pool.get("source", db))
            values[db] = (
                sequences.read(self.pool.get("source", db), names),
                sequences.read(self.pool.get("target", db), names),
            )
        return values

    def sequences_copied(self) -> bool:
        """Every target sequence is at or ahead of its source (ahead: the target took writes)."""
        for db, (source_values, target_values) in self._sequence_values().items():
            conn = self.pool.get("source", db)
            steps = sequences.increments(conn, sequences.names(conn))
            if not sequences.at_or_ahead(target_values, source_values, steps):
                return False
        return True

    def copy_sequences(self, *, dry_run: bool) -> Sequence[Change]:
        """Each sequence's last_value and is_called, from source to target."""
        changes: list[Change] = []
        for db, (source_values, _) in self._sequence_values().items():
            changes += sequences.write(
                self.pool.get("target", db), source_values, where=f"target/{db}", dry_run=dry_run
            )
        return changes

    def large_objects_copied(self) -> bool:
        """The target holds the source's large objects: bytes, owners and privileges."""
        return all(
            large_objects.is_copied(self.pool.get("source", db), self.pool.get("target", db))
            for db in self.engines
        )

    def copy_large_objects(self, *, dry_run: bool) -> Sequence[Change]:
        """Every large object to the target (logical replication carries none)."""
        changes: list[Change] = []
        for db in self.engines:
            changes += large_objects.copy(
                self.pool.get("source", db),
                self.pool.get("target", db),
                where=f"target/{db}",
                dry_run=dry_run,
            )
        return changes

    def verify_counts(self, *, dry_run: bool) -> Sequence[Change]:
        """Exact row counts of every table, source and target counted at the same time."""
        changes = []
        for db in self.engines:
            source = self.pool.get("source", db)
            tables = [(t.schema, t.name) for t in replication.replicated_tables(source)]
            changes.append(Change(db, f"count(*) of {len(tables)} tables on both sides"))
            if not dry_run:
                self._compare_counts(db, tables)
        return changes

    def _compare_counts(self, db: str, tables: list[tuple[str, str]]) -> None:
        """verify's count mode; the source is fenced and the target has applied all of it."""
        counts = verify.count_tables(
            self.pool.get("source", db), self.pool.get("target", db), db, tables
        )
        differ = [c for c in counts if c.differences]
        if differ:
            detail = ", ".join(f"{c.table} {c.source_rows} vs {c.target_rows}" for c in differ[:10])
            raise StepFailed(
                f"{db}: row counts differ between source and target: {detail}",
                hint="the switch rolled back; compare the tables before trying again",
            )

    def is_promoted(self) -> bool:
        """Every database's target stands alone."""
        return all(engine.is_promoted() for engine in self.engines.values())

    def promote(self, *, dry_run: bool) -> Sequence[Change]:
        """End every subscription and drop its slot."""
        changes: list[Change] = []
        for engine in self.engines.values():
            changes += engine.promote(dry_run=dry_run)
        return changes

    def fallback_running(self) -> bool:
        """Reverse replication (target to source) exists for every database."""
        return all(engine.subscription_exists() for engine in self.fallback.values())

    def start_fallback(self, *, dry_run: bool) -> Sequence[Change]:
        """Replicate target to source, without copying: both hold the same rows right now.

        It starts after the promotion and before the writers, so it misses no write
        made on the target, and `cutover rollback` can go back with nothing lost.
        """
        changes: list[Change] = []
        for engine in self.fallback.values():
            if not engine.replication_role_ready():
                changes += engine.create_replication_role(dry_run=dry_run)
            if not engine.publication_exists():
                changes += engine.create_publication(dry_run=dry_run)
            if not engine.subscription_exists():
                changes += engine.create_subscription(dry_run=dry_run)
        return changes

    def is_repointed(self) -> bool:
        """Every place that holds a connection string names the target."""
        return all(place.points_to(self.plan.target) for place in self.repoints)

    def refresh_materialized_views(self, *, dry_run: bool) -> Sequence[Change]:
        """Refresh on the target each view populated on the source; the writers write on."""
        changes: list[Change] = []
        for db in self.plan.databases:
            wanted = matviews.to_refresh(self.pool.get("source", db), self.pool.get("target", db))
            changes += matviews.refresh_all(
                self.pool.get("target", db), wanted, where=f"target/{db}", dry_run=dry_run
            )
        return changes

    def repoint(self, *, dry_run: bool) -> Sequence[Change]:
        """Point every connection string at the target."""
        changes: list[Change] = []
        for place in self.repoints:
            changes += place.point_to(self.plan.target, dry_run=dry_run)
        return changes


def phase(
    plan: Plan,
    pool: Pool,
    engines: dict[str, Engine],
    *,
    fallback: dict[str, Engine] | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Phase:
    """The switch steps for the whole move (every database at once).

    With `fallback` (reverse engines, target to source) the switch starts reverse
    replication between the promotion and the writers, for `cutover rollback`.
    """
    switch = Switch(plan, pool, engines, clock=clock, sleep=sleep, fallback=fallback)
    large = (
        [Step("copy_large_objects", switch.copy_large_objects, switch.large_objects_copied)]
        if plan.large_objects is LargeObjects.COPY
        else []
    )
    steps = [
        Step("check_ready", switch.check_ready, attempts=1),
        Step("stop_writers", switch.stop_writers, undo=switch.start_writers, attempts=1),
        Step("fence_source", switch.fence_source, undo=switch.unfence_source, attempts=1),
        Step("wait_for_barrier", switch.wait_for_barrier, attempts=1),
        Step("copy_sequences", switch.copy_sequences, switch.sequences_copied),
        *large,  # while the source is fenced: nobody changes them meanwhile
        Step("verify_counts", switch.verify_counts, attempts=1),
        Step("promote", switch.promote, switch.is_promoted, point_of_no_return=True),
    ]
    if fallback:
        steps.append(Step("start_fallback", switch.start_fallback, switch.fallback_running))
    steps += [
        Step("repoint", switch.repoint, switch.is_repointed if switch.repoints else None),
        Step("start_writers", switch.start_writers, attempts=1),
        Step("refresh_materialized_views", switch.refresh_materialized_views, attempts=1),
    ]
    return Phase("switch", tuple(steps), undo_on_failure=True)
