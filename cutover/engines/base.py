"""What every replication engine offers the phases, and the values it reports."""

from collections.abc import Callable, Sequence
from typing import Protocol

from cutover.pg.copy import CopyProgress
from cutover.pg.replication import SlotState
from cutover.steps import Change


class Engine(Protocol):
    """One database's replication from source to target."""

    def replication_role_ready(self) -> bool: ...

    def create_replication_role(self, *, dry_run: bool) -> Sequence[Change]: ...

    def publication_exists(self) -> bool: ...

    def create_publication(self, *, dry_run: bool) -> Sequence[Change]: ...

    def subscription_exists(self) -> bool: ...

    def create_subscription(self, *, dry_run: bool) -> Sequence[Change]:
        """Subscribe with a slot of its own and no copy (the rows are there: fallback)."""
        ...

    def copy_data(
        self,
        *,
        jobs: int,
        deadline: float,
        on_progress: Callable[[CopyProgress], None],
        dry_run: bool,
    ) -> Sequence[Change]:
        """Copy every table consistently with the changes streamed later; subscribe, disabled."""
        ...

    def streaming(self) -> bool: ...

    def start_streaming(self, *, dry_run: bool) -> Sequence[Change]: ...

    def progress(self) -> CopyProgress: ...

    def slot(self) -> SlotState | None: ...

    def ready_to_switch(self) -> bool: ...

    def prepare_switch(self, *, dry_run: bool) -> Sequence[Change]: ...

    def write_barrier(self, token: str) -> str: ...

    def barrier_reached(self, token: str, lsn: str) -> bool: ...

    def is_promoted(self) -> bool: ...

    def promote(self, *, dry_run: bool) -> Sequence[Change]: ...
