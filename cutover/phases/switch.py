"""switch: move the writes from the source to the target.

1. check_ready: every table copied; lag under max_switch_lag for lag_window, unbroken
   (a spike starts the window again; after ready_timeout the switch fails);
   apply commits made synchronous so the barrier is confirmed within ms.
   copy_sequences_ahead: the target's sequences set to the source's, writers still
   writing, so that copy_sequences in the pause sets only the ones that moved since.
2. stop_writers: tier by tier, each tier drained before the next.
3. fence_source: the application's roles lose LOGIN, their sessions end; a
   session still writing afterwards (a superuser, a role left out) aborts.
4. wait_for_barrier: a marker row committed after the fence; the target must
   have applied it and the slot confirmed its position: zero lag, proven. Each
   side's snapshot is then held for verify_counts.
5. copy_sequences: each sequence the target is behind on set to the source's real
   state (never one the target is ahead on).
   copy_large_objects (with `large_objects: copy`): every large object, same
   OID, owner and privileges; those the source no longer has are deleted.
6. promote: the subscription ends and its slot is dropped (point of no return).
   enable_target_backups (a dms section, no `terraform` one): automated backups
   and point-in-time recovery on for the new primary, a quick patch (phases/backups.py).
7. repoint: connection strings now name the target.
8. start_writers: tiers in reverse order, now writing to the target.
   back_up_target (a dms section): the new primary's first backup asked for.
9. refresh_materialized_views: the views populated on the source, refreshed
    on the target with the writes made since the copy; after the pause,
    CONCURRENTLY where a unique index allows it.
10. verify_counts: exact row counts of every table, source against target, in
    the snapshots both sides took right after the barrier: exact, and off the
    pause. A difference ends the switch with a warning (exit 3), not a rollback.
    enable_target_backups (with a `terraform` section): backups and
    point-in-time recovery turned on for the new primary through Terraform
    (phases/terraform.py), the writers writing again; the switch's
    confirmation is the approval of its plan, which is guarded like every other.
11. check_writers: each writer with a `health` probe reports healthy within
    drain_timeout; if not, the switch ends with a warning (exit 3), not a
    rollback: the data is on the target. Running the switch again checks again.
12. wait_for_target_backup (a dms section): the backup asked for after the
    writers, waited for, bounded; one that fails or is late is a warning
    (exit 3) too. Running the switch again takes it anew, or waits again.

A failure in steps 1-6 rolls back by itself: the fence is lifted and the
writers start again on the source, which keeps replicating.
"""

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial

from cutover import database, preflight, state, verify, wait
from cutover.database import Pool
from cutover.engines import each_database, prove_applied
from cutover.engines.base import Engine
from cutover.errors import CountsDiffer, PreconditionFailed, StepFailed, WritersUnhealthy
from cutover.ledger import writer_records
from cutover.phases import backups as backing_up
from cutover.phases import start as starting
from cutover.phases import terraform as terraforming
from cutover.plan import LargeObjects, Plan
from cutover.repoint import repoint_for
from cutover.steps import Change, Phase, Step
from cutover.steps import SwitchStep as S
from cutover.types import Lag, SyncProgress
from cutover.writers import Writer, writer_for

log = logging.getLogger(__name__)

POLL_SECONDS = 0.02
READY_POLL_SECONDS = 0.5
# A worker stopped longer than its restart takes has failed. pglogical starts a failed worker
# again only when its manager wakes (up to 3 min later): the switch wakes it (resume_apply),
# and the manager then waits 5 s after the failure and up to 5 s more.
APPLY_STOPPED_GRACE = 15.0
HEALTH_POLL_SECONDS = 0.5  # a health probe may run a command: not every few ms
# A table carried after start (sync-schema) has its rows before its engine calls it ready
# (pglogical: synchronized, then ready once the apply passes the copy's end): waited for.
COPY_SETTLE_SECONDS = 30.0


@dataclass(frozen=True)
class Readiness:
    """Where the wait for a quiet lag stands: each database's lag, and how long it held."""

    lag: dict[str, int]  # bytes, per database
    limit: int  # max_switch_lag
    held_for: float  # seconds the lag has stayed under the limit
    window: float  # lag_window


FENCE_SETTLE_SECONDS = 2.0  # terminated sessions take a moment to go


class Switch:
    """The switch of one move: each method is a step, or a step's probe or undo."""

    def __init__(
        self,
        plan: Plan,
        servers: Pool,
        engine: Engine,
        *,
        clock: Callable[[], float],
        sleep: Callable[[float], None],
        fallback: Engine | None = None,
        on_ready: Callable[[Readiness], None] = lambda _: None,
    ) -> None:
        self.plan = plan
        self.on_ready = on_ready
        self.servers = servers
        self.engine = engine
        self.fallback = fallback
        self.databases = plan.databases
        self.limits = plan.thresholds
        records = writer_records(plan)
        self.tiers = [[writer_for(spec, records=records) for spec in tier] for tier in plan.tiers()]
        self.repoints = [repoint_for(spec, plan.databases) for spec in plan.repoint]
        self.clock = clock
        self.sleep = sleep
        self._behind: dict[str, database.SequenceStates] = {}  # sequences_copied's reading
        self._pins: dict[str, verify.Pinned] = {}  # both sides at the barrier, for the counts

    def _wait(
        self,
        probe: Callable[[], bool],
        *,
        timeout: float,
        what: str | Callable[[], str],
        hint: str,
    ) -> None:
        wait.until(
            probe,
            timeout=timeout,
            interval=POLL_SECONDS,
            what=what,
            hint=hint,
            clock=self.clock,
            sleep=self.sleep,
        )

    def check_ready(self, *, dry_run: bool) -> Sequence[Change]:
        """Copy finished, apply commits synchronous, lag under the limit for the window."""
        changes: list[Change] = []
        if self.fallback is not None:  # first: a refusal needs no copy to be finished
            self._check_fallback_possible()
        for db in self.databases:
            progress = self._copied(db)
            self._check_no_drift(db, set(progress.tables))
            if not self.engine.ready_to_switch(db):
                changes += self.engine.prepare_switch(db, dry_run=dry_run)
        if self.plan.large_objects is LargeObjects.COPY:
            self._check_large_object_roles()
        if dry_run:
            return [*changes, Change("source", f"lag under {self.limits.max_switch_lag} B held")]
        self._hold_lag()
        # verify_counts' connections, opened now: in the pause only their snapshots are taken.
        self._pins = {db: verify.Pinned(self.servers, db) for db in self.databases}
        return changes

    def _copied(self, db: str) -> SyncProgress:
        """The initial copy's progress, every table ready; one still settling is waited for
        up to COPY_SETTLE_SECONDS; none read (no copy begun) fails at once."""
        hint = "run `cutover start --wait` first"

        def done() -> SyncProgress | None:
            progress = state.replication(self.engine, self.servers, db).progress
            if progress is None:
                raise PreconditionFailed(f"{db}: the initial copy has not finished", hint=hint)
            return progress if progress.done else None

        return wait.until(
            done,
            timeout=min(COPY_SETTLE_SECONDS, self.limits.ready_timeout),
            interval=READY_POLL_SECONDS,
            what=f"{db}: the initial copy did not finish",
            hint=hint,
            clock=self.clock,
            sleep=self.sleep,
        )

    def _hold_lag(self) -> None:
        """Wait until the lag stays under max_switch_lag for lag_window, unbroken.

        A spike starts the window again; after ready_timeout the switch fails with the
        figures, before anything stopped. An apply worker that fails meanwhile fails the
        switch at once: its lag may look small while nothing is applied.
        """
        limit, window = self.limits.max_switch_lag, self.limits.lag_window
        since = self.clock()
        now: dict[str, int] = {}
        highest: dict[str, int] = {}
        errors = {db: self.engine.apply_errors(db) for db in self.databases}
        stopped: dict[str, float] = {}  # since when each database's apply worker is stopped
        woken: set[str] = set()  # the databases whose stopped worker was asked to start again

        def held() -> bool:
            nonlocal since
            for db in self.databases:
                now[db] = self._lag(db).bytes
                highest[db] = max(highest.get(db, 0), now[db])
                self._check_apply(db, errors[db])
                if not self._applying(db, stopped, woken):
                    since = self.clock()  # a lag nothing applies holds nothing
            if any(n > limit for n in now.values()):
                since = self.clock()  # a spike: the window starts again
            held_for = self.clock() - since
            self.on_ready(Readiness(dict(now), limit, held_for, window))
            return held_for >= window and not stopped

        def figures() -> str:
            lags = ", ".join(f"{db} {now[db]} B now, {highest[db]} B at most" for db in now)
            return (
                f"the lag did not stay under max_switch_lag ({limit} B) for {window:g} s ({lags})"
            )

        wait.until(
            held,
            timeout=self.limits.ready_timeout,
            interval=READY_POLL_SECONDS,
            what=figures,
            hint="nothing was stopped; see `cutover status --watch` for what holds the target "
            "back, then switch again (or raise thresholds.ready_timeout)",
            clock=self.clock,
            sleep=self.sleep,
        )

    def _check_no_drift(self, db: str, carried: set[str]) -> None:
        """Raise when the moved tables differ between the sides, or one is not replicated.

        A column the target lacks stops its apply; a table made after start leaves
        its rows behind on the source: the switch must not begin.
        """
        found = database.schema_drift(self.servers, db, carried=carried)
        if found:
            shown = "; ".join(d.describe() for d in found[:10])
            raise PreconditionFailed(
                f"{db}: the schema drifted since start: {shown}"
                + (f" and {len(found) - 10} more" if len(found) > 10 else ""),
                hint="nothing was stopped. `cutover sync-schema` makes the target's tables "
                "like the source's and replicates new ones (--dry-run shows how); then switch: "
                "docs/troubleshooting.md#schema-drift",
            )

    def _check_apply(self, db: str, before: int) -> None:
        """Raise when the target's apply worker failed since `before` errors were counted."""
        failed = self.engine.apply_errors(db) - before
        if failed > 0:
            raise PreconditionFailed(
                f"{db}: the target's apply worker failed {failed} times while the switch "
                "waited for a quiet lag: the target does not apply what the source sends",
                hint="nothing was stopped; the target's log says why (often a table or column "
                "the source has and the target lacks: docs/troubleshooting.md#the-apply-worker-"
                "fails); fix it, then switch again",
            )

    def _applying(self, db: str, stopped: dict[str, float], woken: set[str]) -> bool:
        """Whether the apply worker runs; raise once it has been stopped by a failure for
        APPLY_STOPPED_GRACE (`stopped` keeps since when, per database).

        The engines that count no errors (pglogical) show a failure this way; a worker
        restarting shows it for a moment, so only a lasting stop counts. The first time,
        the worker is asked to start again (a cut connection stops it too): once only, so
        that a worker failing on a change fails the switch.
        """
        if not self.engine.apply_stopped(db):
            stopped.pop(db, None)
            return True
        if db not in woken:
            woken.add(db)
            for change in self.engine.resume_apply(db, dry_run=False):
                log.warning("%s: the apply worker is stopped: %s", db, change.action)
        since = stopped.setdefault(db, self.clock())
        if self.clock() - since >= APPLY_STOPPED_GRACE:
            raise PreconditionFailed(
                f"{db}: the target's apply worker has been stopped by a failure for "
                f"{APPLY_STOPPED_GRACE:g} s: the target does not apply what the source sends",
                hint="nothing was stopped; the target's log says why (a row that conflicts "
                "with one written on the target, a table or column the target lacks: "
                "docs/troubleshooting.md#the-apply-worker-fails); fix it, then switch again",
            )
        return False

    def _check_fallback_possible(self) -> None:
        """Reverse replication starts after the promotion: what it needs is checked before."""
        problems = preflight.fallback_problems(self.plan, self.servers)
        if problems:
            raise PreconditionFailed(
                "--keep-fallback cannot replicate back to the source: " + "; ".join(problems),
                hint="nothing was stopped; " + preflight.fallback_hint(self.plan),
            )

    def _check_large_object_roles(self) -> None:
        """The copy gives each object its owner and grants: those roles must exist first."""
        for db in self.databases:
            missing = database.large_object_roles_missing(self.servers, db)
            if missing:
                raise PreconditionFailed(
                    f"{db}: roles that own or are granted large objects do not exist on the "
                    "target: " + ", ".join(missing),
                    hint="create them on the target (`cutover check` prints the statements)",
                )

    def _lag(self, db: str) -> Lag:
        """The engine's lag, the reading state.replication shows; only it, twice a second."""
        self.engine.heartbeat(db)
        lag = self.engine.lag(db)
        if lag is None:
            raise PreconditionFailed(
                f"{db}: the replication slot is missing on the source: the changes since are "
                "lost to the target",
                hint=f"nothing was stopped; {starting.RECOPY_HINT}, then switch",
            )
        return lag

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
        self._wait(
            lambda: all(writer.is_drained() for writer in tier),
            timeout=self.limits.drain_timeout,
            what=lambda: (
                f"writers {', '.join(w.name for w in tier)} did not drain"
                + "".join(f"; {w.name} still runs {w.draining()}" for w in tier if w.draining())
            ),
            hint="raise thresholds.drain_timeout, or see why they keep writing",
        )

    def start_writers(self, *, dry_run: bool) -> Sequence[Change]:
        """Tiers in reverse order."""
        changes: list[Change] = []
        for tier in reversed(self.tiers):
            for writer in tier:
                changes += writer.start(dry_run=dry_run)
        return changes

    def check_writers(self, *, dry_run: bool) -> Sequence[Change]:
        """Every writer with a health probe reports healthy, within drain_timeout.

        This comes after the point of no return: an unhealthy writer ends the switch with
        WritersUnhealthy (a warning, exit 3); nothing is undone, the data is on the target.
        """
        probed = [
            writer
            for specs, tier in zip(self.plan.tiers(), self.tiers, strict=True)
            for spec, writer in zip(specs, tier, strict=True)
            if spec.has_health
        ]
        changes = [Change(f"writer {w.name}", "health probe until healthy") for w in probed]
        if dry_run or not probed:
            return changes
        unhealthy: dict[str, str] = {}

        def healthy() -> bool:
            unhealthy.clear()
            for writer in probed:
                ok, detail = writer.is_healthy()
                if not ok:
                    unhealthy[writer.name] = detail
            return not unhealthy

        try:
            wait.until(
                healthy,
                timeout=self.limits.drain_timeout,
                interval=HEALTH_POLL_SECONDS,
                what="writers did not report healthy",
                hint="",
                clock=self.clock,
                sleep=self.sleep,
            )
        except StepFailed:
            named = "; ".join(f"{name}: {detail}" for name, detail in unhealthy.items())
            raise WritersUnhealthy(
                f"the switch is done and the data is on the target, but writers did not "
                f"report healthy within {self.limits.drain_timeout:g} s: {named}",
                hint="look at those writers (they write to the target now; nothing was "
                "rolled back); `cutover status` shows this step; run the same command again "
                "to check them again",
            ) from None
        return changes

    def fence_source(self, *, dry_run: bool) -> Sequence[Change]:
        """No LOGIN for the application's roles, their sessions ended, nobody left writing."""
        changes = database.fence_source(self.plan, self.servers, dry_run=dry_run)
        if dry_run:
            return changes
        writing: list[str] = []

        def quiet() -> bool:
            writing[:] = database.sessions_writing(self.plan, self.servers)
            return not writing

        self._wait(  # terminated sessions take a moment to go
            quiet,
            timeout=FENCE_SETTLE_SECONDS,
            what=lambda: (
                "sessions still write on the source after the fence: " + ", ".join(writing)
            ),
            hint="a superuser or a role outside fence.roles is writing; stop it or "
            "fence it, then switch again",
        )
        return changes

    def unfence_source(self, *, dry_run: bool) -> Sequence[Change]:
        """Give LOGIN back to every role this move fenced."""
        return database.unfence_source(self.plan, self.servers, dry_run=dry_run)

    def wait_for_barrier(self, *, dry_run: bool) -> Sequence[Change]:
        """A marker committed after the fence, applied on the target, confirmed by the slot."""
        if dry_run:
            return [database.barrier_marker(self.plan, self.servers, db) for db in self.databases]
        markers = prove_applied(
            self.engine,
            self.databases,
            timeout=self.limits.switch_timeout,
            hint="replication is slow or stopped (`cutover status`); the switch "
            "rolled back and the source is writable again",
            clock=self.clock,
            sleep=self.sleep,
        )

        def pin(db: str) -> None:  # the moment verify_counts compares, after the pause
            pinned = self._pins.get(db) or self._pins.setdefault(
                db, verify.Pinned(self.servers, db)
            )
            pinned.pin()

        each_database(self.engine, self.databases, pin)  # each on connections of its own
        return [
            Change(f"target/{db}", f"barrier at {marker.position} applied")
            for db, marker in markers.items()
        ]

    def copy_sequences_ahead(self, *, dry_run: bool) -> Sequence[Change]:
        """Set the target's sequences to the source's while the writers still write.

        After the fence, copy_sequences then sets only the ones that moved meanwhile.
        """
        changes: list[Change] = []
        for db in self.databases:
            changes += database.copy_sequences(self.servers, db, dry_run=dry_run)
        return changes

    def sequences_copied(self) -> bool:
        """No target sequence is behind its source (ahead: the target took writes).

        What it read is what copy_sequences, asked right after, sets: the source is
        fenced and nothing but this switch sets the target's sequences, so a second
        reading would find the same.
        """
        self._behind = {db: database.sequences_behind(self.servers, db) for db in self.databases}
        return not any(self._behind.values())

    def copy_sequences(self, *, dry_run: bool) -> Sequence[Change]:
        """Each sequence the target is behind on set to the source's last_value and is_called."""
        behind, self._behind = self._behind, {}
        changes: list[Change] = []
        for db in self.databases:
            late = behind[db] if db in behind else database.sequences_behind(self.servers, db)
            changes += database.set_sequences(self.servers, db, late, dry_run=dry_run)
        return changes

    def large_objects_copied(self) -> bool:
        """The target holds the source's large objects: bytes, owners and privileges."""
        return all(database.large_objects_copied(self.servers, db) for db in self.databases)

    def copy_large_objects(self, *, dry_run: bool) -> Sequence[Change]:
        """Every large object to the target (logical replication carries none)."""
        changes: list[Change] = []
        for db in self.databases:
            changes += database.copy_large_objects(self.servers, db, dry_run=dry_run)
        return changes

    def verify_counts(self, *, dry_run: bool, promoted: bool = False) -> Sequence[Change]:
        """Exact row counts of every table, source against target, as they were at the barrier.

        The snapshots taken right after the barrier make the counts exact whenever
        they run: in the pause (before the promotion, a difference rolls back) or
        after it, writers back on the target (`promoted`: a difference is a warning,
        the data stays where it is).
        """
        changes: list[Change] = []
        problems: list[str] = []
        for db in self.databases:
            replicated = database.replicated_tables(self.servers, db)
            absent = set(database.tables_missing_on_target(self.servers, db, replicated))
            tables = [t for t in replicated if t not in absent]
            problems += [f"{db}: {t} is missing on the target" for t in sorted(absent)]
            changes.append(Change(db, f"count(*) of {len(tables)} tables on both sides"))
            if dry_run:
                continue
            pin = self._pins.pop(db, None)
            if pin is not None and pin.pinned:
                counts = pin.counts(tables)
                pin.close()
            elif not promoted:  # the source is fenced and the target has applied all of it
                counts = verify.counts(self.servers, db, tables)
            else:
                changes[-1] = Change(
                    db,
                    "row counts not compared: the switch was interrupted after the promotion "
                    "and the snapshots of its pause are gone; `cutover verify` compares now",
                )
                continue
            problems += [
                f"{db}: {c.table} {c.source_rows} vs {c.target_rows}"
                for c in counts
                if c.differences
            ]
        if problems:
            detail = ", ".join(problems[:10]) + (" and more" if len(problems) > 10 else "")
            if promoted:
                raise CountsDiffer(
                    f"the switch is done and the writers write on the target, but row counts "
                    f"at the barrier differ: {detail}",
                    hint="`cutover verify --mode checksum` shows the rows; with --keep-fallback "
                    "`cutover rollback` goes back with nothing lost; run the switch again to "
                    "finish its last steps",
                )
            raise StepFailed(
                f"row counts differ between source and target: {detail}",
                hint="the switch rolled back; compare the tables before trying again",
            )
        return changes

    def is_promoted(self) -> bool:
        """Every database's target stands alone."""
        return all(self.engine.promoted(db) for db in self.databases)

    def promote(self, *, dry_run: bool) -> Sequence[Change]:
        """Stop replicating to every database, at once: the target stands alone (several
        databases together where each replicates apart; see engines.each_database)."""
        promoted = each_database(
            self.engine, self.databases, partial(self.engine.promote, dry_run=dry_run)
        )
        return [c for changes in promoted.values() for c in changes]

    def is_released(self) -> bool:
        """No subscription is left, and the source keeps no WAL for the target."""
        return all(
            self.engine.stopped(db) and self.engine.source_released(db) for db in self.databases
        )

    def release_source(self, *, dry_run: bool) -> Sequence[Change]:
        """Drop the ended subscriptions and their slots: work the writers need not wait for."""
        changes: list[Change] = []
        for db in self.databases:
            changes += self.engine.stop(db, dry_run=dry_run)
            changes += self.engine.release_source(db, dry_run=dry_run)
        return changes

    def fallback_running(self) -> bool:
        """Reverse replication (target to source) exists for every database."""
        back = self.fallback
        return back is not None and all(back.fallback_running(db) for db in self.databases)

    def start_fallback(self, *, dry_run: bool) -> Sequence[Change]:
        """Replicate target to source, without copying: both hold the same rows right now.

        It starts after the promotion and before the writers, so it misses no write
        made on the target, and `cutover rollback` can go back with nothing lost.
        """
        changes: list[Change] = []
        if self.fallback is not None:
            for db in self.databases:
                changes += self.fallback.start_fallback(db, dry_run=dry_run)
        return [c.from_other_side() for c in changes]

    def is_repointed(self) -> bool:
        """Every place that holds a connection string names the target."""
        return all(place.points_to(self.plan.target) for place in self.repoints)

    def refresh_materialized_views(self, *, dry_run: bool) -> Sequence[Change]:
        """Refresh on the target each view populated on the source; the writers write on."""
        changes: list[Change] = []
        for db in self.databases:
            changes += database.refresh_views(
                self.servers, db, unpopulated_only=False, dry_run=dry_run
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
    servers: Pool,
    engine: Engine,
    *,
    fallback: Engine | None = None,
    on_ready: Callable[[Readiness], None] = lambda _: None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Phase:
    """The switch steps for the whole move (every database at once).

    With `fallback` (the engine of the reversed move, target to source) the switch
    starts reverse replication between the promotion and the writers, for
    `cutover rollback`. An engine that sets the sequences at its promotion has no
    copy_sequences step; on a target that takes no write before its promotion,
    the sequences and large objects are copied right after it, writers still stopped.
    """
    switch = Switch(
        plan, servers, engine, clock=clock, sleep=sleep, fallback=fallback, on_ready=on_ready
    )
    traits = engine.traits
    # What writes to the target: before the promotion, unless the target takes no write
    # before it; either way while the source is fenced, so nobody changes them meanwhile.
    writes: list[Step] = []
    if not traits.sets_sequences_at_promote:
        writes.append(Step(S.COPY_SEQUENCES, switch.copy_sequences, switch.sequences_copied))
    if plan.large_objects is LargeObjects.COPY:
        writes.append(
            Step(S.COPY_LARGE_OBJECTS, switch.copy_large_objects, switch.large_objects_copied)
        )
    before, after = ([], writes) if traits.target_read_only_until_promote else (writes, [])
    # Sequences set ahead while the writers write leave copy_sequences, in the pause, only
    # the ones that moved since; a target that takes no write before its promotion cannot.
    ahead = (
        [Step(S.COPY_SEQUENCES_AHEAD, switch.copy_sequences_ahead, attempts=1)]
        if not traits.sets_sequences_at_promote and not traits.target_read_only_until_promote
        else []
    )
    steps = [
        Step(S.CHECK_READY, switch.check_ready, attempts=1),
        *ahead,
        Step(S.STOP_WRITERS, switch.stop_writers, undo=switch.start_writers, attempts=1),
        Step(S.FENCE_SOURCE, switch.fence_source, undo=switch.unfence_source, attempts=1),
        Step(S.WAIT_FOR_BARRIER, switch.wait_for_barrier, attempts=1),
        *before,
        Step(S.PROMOTE, switch.promote, switch.is_promoted, point_of_no_return=True),
        *after,
    ]
    if fallback is not None:
        steps.append(Step(S.START_FALLBACK, switch.start_fallback, switch.fallback_running))
    module = terraforming.module_for(plan, engine)
    backups = backing_up.backups_for(plan)
    # Cloud SQL's new primary: its backups turned on (a quick patch, in the pause) unless
    # Terraform does it below; its first backup asked for once the writers are back, and
    # waited for at the very end (a large instance takes long; nobody waits in the pause).
    if backups is not None and module is None:
        steps.append(backing_up.enable_target_backups_step(backups))
    back_up, wait_for_backup = (
        backing_up.target_backup_steps(backups) if backups is not None else (None, None)
    )
    steps += [
        Step(S.REPOINT, switch.repoint, switch.is_repointed if switch.repoints else None),
        Step(S.START_WRITERS, switch.start_writers, attempts=1),
        *([back_up] if back_up is not None else []),
        Step(S.REFRESH_MATERIALIZED_VIEWS, switch.refresh_materialized_views, attempts=1),
        *(
            [Step(S.RELEASE_SOURCE, switch.release_source, switch.is_released)]
            if traits.released_by_switch
            else []
        ),
        # Off the pause: counted in the snapshots pinned at the barrier, writers writing.
        Step(S.VERIFY_COUNTS, partial(switch.verify_counts, promoted=True), attempts=1),
    ]
    if module is not None:  # off the pause, the writers writing on the new primary
        steps.append(terraforming.target_backups_step(module))
    steps += [
        # An unhealthy writer leaves the views refreshed and the switch otherwise done.
        Step(S.CHECK_WRITERS, switch.check_writers, attempts=1),
        # Last: a backup that fails is a warning too; the writers were checked first.
        *([wait_for_backup] if wait_for_backup is not None else []),
    ]
    return Phase("switch", tuple(steps), undo_on_failure=True, after_interrupt=servers.reset)
