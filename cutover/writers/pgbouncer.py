"""The application's PgBouncers as a writer: PAUSE holds its queries, RESUME lets them go.

`PAUSE db` lets the transactions in flight end, closes the database's server
connections, and from then on holds every new query in PgBouncer's queue
instead of failing it; `RESUME db` sends the held queries on, to wherever the
database's entry points by then (a pgbouncer repoint rewrites it while paused).
The application sees a slower query, not an error, and keeps its connections.

Each PAUSE runs on its own console connection, since PgBouncer answers it only
once the database is drained: the writer is drained when every PAUSE has been
answered. Until then `draining` names the clients still holding a server
connection (in session pooling, every client holds one until it disconnects).
"""

from collections.abc import Sequence

from cutover.errors import CutoverError, StepFailed
from cutover.pg import pgbouncer
from cutover.plan import PgBouncer
from cutover.plan import PgBouncerWriter as PgBouncerSpec
from cutover.steps import Change


class PgBouncerWriter:
    """The databases of one or more PgBouncers, paused and resumed together."""

    def __init__(self, name: str, spec: PgBouncerSpec) -> None:
        self.name = name
        self._spec = spec
        self._pauses: list[pgbouncer.Pause] = []

    def _each(self) -> list[tuple[PgBouncer, str]]:
        return [(b, db) for b in self._spec.pgbouncers for db in self._spec.databases]

    def stop(self, *, dry_run: bool) -> Sequence[Change]:
        """PAUSE each database on each PgBouncer (answered once its transactions ended)."""
        changes = [
            Change(f"writer {self.name}", f"{b.describe()}: PAUSE {db}") for b, db in self._each()
        ]
        if not dry_run:
            self._abandon()
            # One already paused (a switch run again) is not paused twice: PgBouncer refuses.
            self._pauses = [
                pgbouncer.Pause(b, db) for b, db, pool in self._pools() if not pool.paused
            ]
        return changes

    def is_drained(self) -> bool:
        """Every PAUSE was answered: no query of the application runs on a server now."""
        failed = [p for p in self._pauses if p.done.is_set() and p.error]
        if failed:
            raise StepFailed(
                f"writer {self.name}: "
                + "; ".join(
                    f"{p.bouncer.describe()} refused PAUSE {p.database}: {p.error}" for p in failed
                ),
                hint="check that the plan's databases are entries of its [databases] and that "
                "the plan's user is one of its admin_users",
            )
        if not all(p.done.is_set() for p in self._pauses):
            return False
        return all(pool.paused and pool.connections == 0 for _, _, pool in self._pools())

    def draining(self) -> str:
        """What the PAUSEs not yet answered wait for: the clients holding a server connection."""
        said = []
        for p in self._pauses:
            if not p.done.is_set():
                clients = pgbouncer.busy_clients(p.bouncer, p.database)
                held = ", ".join(c.describe() for c in clients[:5]) or "a transaction"
                said.append(f"{held} on {p.bouncer.describe()} {p.database}")
        return "; ".join(said)

    def start(self, *, dry_run: bool) -> Sequence[Change]:
        """RESUME each database that is paused: the queries held go on."""
        changes = [
            Change(f"writer {self.name}", f"{b.describe()}: RESUME {db}") for b, db in self._each()
        ]
        if dry_run:
            return changes
        self._abandon()
        for bouncer in self._spec.pgbouncers:
            with pgbouncer.console(bouncer) as conn:
                shown = pgbouncer.databases(conn)
                for db in self._spec.databases:
                    if db in shown and shown[db].paused:
                        pgbouncer.run(conn, "RESUME", db)
        return changes

    def problems(self) -> list[str]:
        """Each PgBouncer's console answers and shows every database of the writer."""
        try:
            self._pools()
        except CutoverError as exc:
            return [exc.message]
        return []

    def is_healthy(self) -> tuple[bool, str]:
        """No database of the writer is left paused on any PgBouncer."""
        paused = [f"{b.describe()} {db}" for b, db, pool in self._pools() if pool.paused]
        if paused:
            return False, "still paused: " + ", ".join(paused)
        return True, ""

    def _pools(self) -> list[tuple[PgBouncer, str, pgbouncer.PoolDatabase]]:
        """Each database of the writer on each PgBouncer as it shows it: one look at each."""
        found = []
        for bouncer in self._spec.pgbouncers:
            shown = pgbouncer.shown(bouncer)
            for db in self._spec.databases:
                if db not in shown:
                    raise StepFailed(
                        f"writer {self.name}: {bouncer.describe()} has no database {db}",
                        hint="the plan's pgbouncer databases are the names of its [databases] "
                        "section",
                    )
                found.append((bouncer, db, shown[db]))
        return found

    def _abandon(self) -> None:
        for pause in self._pauses:
            pause.abandon()
        self._pauses = []
