"""What every replication engine offers the phases, in the controller's words.

An engine is built once per move (`cutover.engines.engine_for`) and answers
for each database of the move. The phases write the controller's loop once,
against this Protocol, and never test which engine they hold: what an engine
does differently is declared in its `Traits`.
"""

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Protocol

from cutover.steps import Change
from cutover.types import Lag, MonitoredLag, ServiceState, SyncProgress, TableName


@dataclass(frozen=True)
class Traits:
    """What an engine does differently; the phases ask these, never the engine's kind."""

    keys_before_copy: bool = False  # the target's keys and indexes exist before the copy
    copies_schema: bool = False  # the initial sync creates the target's schema itself
    sets_sequences_at_promote: bool = False  # promote carries the sequences: no copy step
    target_read_only_until_promote: bool = False  # nothing may write the target before
    # The switch removes what replicated (subscription, slot) once the writers are back;
    # otherwise cleanup does (a DMS job stays for its owner to look at until cleanup).
    released_by_switch: bool = True
    # The source's decoding is set through the service's API (Cloud SQL's flags), not by
    # ALTER SYSTEM and a restart command: prepare asks the engine.
    source_settings_by_api: bool = False
    # Each database replicates on its own (a subscription each), on its own connections:
    # the switch may promote several at once. One job for every database (DMS) may not.
    databases_apart: bool = True


@dataclass(frozen=True)
class Barrier:
    """A marker committed on the source after the fence, and where it was committed."""

    token: str
    position: str  # the source's WAL position after the marker's commit


class Engine(Protocol):
    """Replication of a move's databases from source to target."""

    kind: str  # the plan's engine, for labels
    traits: Traits

    def reading(self) -> AbstractContextManager[None]:
        """A scope in which what the engine asks a service (a cloud API) is asked once.

        Status and each scrape read every database of the move within one; the
        switch and the waits ask outside it, anew each time.
        """
        ...

    # -- prepare: what the source (and the target) need before anything replicates

    def installed(self, db: str) -> bool: ...

    def install(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """What the engine needs on the servers (an extension), before the role and schema."""
        ...

    def access_granted(self, db: str) -> bool: ...

    def grant_access(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """The engine may read every replicated table of the source, and nothing more."""
        ...

    def source_prepared(self, db: str) -> bool: ...

    def prepare_source(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """The source offers its changes (a publication, a replication set)."""
        ...

    # -- initial sync and stream

    def initial_sync_started(self, db: str) -> bool:
        """The copy is whole, or the engine carries it on by itself."""
        ...

    def initial_sync(
        self,
        db: str,
        *,
        jobs: int,
        deadline: float,
        on_progress: Callable[[SyncProgress], None],
        dry_run: bool,
    ) -> Sequence[Change]:
        """Copy every table consistently with the changes streamed afterwards."""
        ...

    def streaming(self, db: str) -> bool: ...

    def stream(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """Apply the changes the source made since the copy, and from then on."""
        ...

    def progress(self, db: str) -> SyncProgress: ...

    def lag(self, db: str) -> Lag | None:
        """How far the target is behind; None: the source keeps no position for it."""
        ...

    def source_decodes(self) -> bool:
        """The source's settings let the move decode (with `source_settings_by_api`)."""
        ...

    def enable_decoding(self, *, restart: bool, dry_run: bool) -> Sequence[Change]:
        """Set what the source needs to decode through the service's API; the restart
        that takes happens only with `restart` (else PreconditionFailed, nothing changed)."""
        ...

    def monitored_lag(self, db: str) -> MonitoredLag | None:
        """The service's own lag figures, for status and metrics only (None: it has none)."""
        ...

    def service_state(self, db: str) -> ServiceState | None:
        """The managed service's own state of the replication (None: no service runs it)."""
        ...

    def apply_errors(self, db: str) -> int:
        """Errors the target's apply has met so far (a counter; only its rise matters)."""
        ...

    def apply_stopped(self, db: str) -> bool:
        """The apply worker is stopped by a failure right now (an engine that counts no
        errors shows its failures this way; one that counts them answers False)."""
        ...

    def describe(self, db: str) -> str | None:
        """The engine's own view of its replication, for status (None: nothing to add)."""
        ...

    def heartbeat(self, db: str) -> None:
        """A small commit on the source where the engine needs WAL to move to confirm."""
        ...

    def resume_apply(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """After a schema change mended on the target: an apply worker stopped by it starts
        again now (nothing when none is stopped)."""
        ...

    def carry(self, db: str, tables: Sequence[TableName], *, dry_run: bool) -> Sequence[Change]:
        """Replicate these tables too, made on both sides after start: rows copied, then changes.

        Done once `progress` lists them.
        """
        ...

    # -- switch

    def ready_to_switch(self, db: str) -> bool: ...

    def prepare_switch(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """What makes the barrier confirm quickly (synchronous apply commits)."""
        ...

    def write_barrier(self, db: str, token: str) -> Barrier: ...

    def barrier_reached(self, db: str, barrier: Barrier) -> bool:
        """The target has applied the marker: every write before it is there."""
        ...

    def promoted(self, db: str) -> bool: ...

    def promote(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """The target stands alone: nothing the source sends is applied once this returns.

        Only what the writers wait for: the subscription and the source's slot are
        removed after they are back (`stop`, then `release_source`).
        """
        ...

    # -- fallback: asked of the engine of the reversed move (target to source)

    def fallback_running(self, db: str) -> bool: ...

    def start_fallback(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """Replicate without a copy: both sides hold the same rows at this moment."""
        ...

    # -- cleanup

    def stopped(self, db: str) -> bool: ...

    def stop(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """The target no longer replicates (before a switch: the move is abandoned)."""
        ...

    def source_released(self, db: str) -> bool: ...

    def release_source(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """The source keeps no WAL for the target any more."""
        ...

    def source_unprepared(self, db: str) -> bool: ...

    def unprepare_source(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """What prepare_source made is gone."""
        ...

    def access_revoked(self) -> bool: ...

    def revoke_access(self, *, dry_run: bool) -> Sequence[Change]:
        """What grant_access made is gone, on both servers (once for the move)."""
        ...

    def uninstalled(self, db: str) -> bool: ...

    def uninstall(self, db: str, *, dry_run: bool) -> Sequence[Change]:
        """Remove what install added, where this move added it; after every other cleanup."""
        ...
