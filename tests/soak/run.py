"""Seeded moves under faults, each judged the same way.

A run makes its scenario's database on the lab's source (the audited write load's
tables, owned by the application's role and written by it and by a role with
grants only, plus the scenario's own tables), writes without pause, and drives a
whole move through the command line: prepare, start, verify, switch, cleanup,
with the scenario's faults on the way. It is judged by:

- every acknowledged write of the load is on the target, exactly once;
- the source took no write after the fence;
- the application saw no error but the fence's (and a restarted server's);
- `verify --mode checksum` found the target equal, and the scenario's tables are
  equal on both sides after the switch;
- every sequence on the target is at or past the source's;
- cleanup left no slot, publication, subscription, role or added column.

    .venv/bin/python -m tests.soak.run --seeds 1-50          # make soak N=50
    .venv/bin/python -m tests.soak.run --seeds 1234          # replay one seed

A failing run prints its seed and what failed; the same seed replays it.
"""

import argparse
import itertools
import json
import signal
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from psycopg import sql

from cutover import load
from cutover.lab import Lab, free_port
from cutover.ledger import journal_for
from cutover.pg import load as load_sql
from cutover.plan import dump
from cutover.plan import load as load_plan
from cutover.runner import FAILPOINT
from tests.conftest import Databases, Result, connect, run_cutover
from tests.integration.conftest import application, replication_objects, set_subscription
from tests.soak import world
from tests.soak.relay import Relay
from tests.soak.scenario import Fault, Scenario, generate

# A tenant database of the move: a table with a serial key, and one without a key.
TENANT = (
    "CREATE TABLE accounts (id bigserial PRIMARY KEY, name text); CREATE TABLE notes (body text)"
)
RESTART_GRACE = 5.0  # seconds after a server restart in which the application may see it
PGBOUNCER_LOGIN_RETRY = 15.0  # PgBouncer's server_login_retry default
CONNECTION_LOST = {"57P01", "57P02", "57P03", "08006", "08001", "08003", ""}


@dataclass
class Outcome:
    """What a run found."""

    seed: int
    engine: str
    faults: list[str]
    acknowledged: int = 0
    lost: int = 0
    duplicated: int = 0
    pause: float | None = None
    churned: int = 0
    seconds: float = 0.0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


class Move:
    """One scenario's database, application, plan and command line."""

    def __init__(self, lab: Lab, databases: Databases, scenario: Scenario, work: Path) -> None:
        self.lab, self.scenario, self.work = lab, scenario, work
        self.db = databases.create(prefix="soak")
        self.tenants = tuple(databases.create(prefix="tenant") for _ in range(scenario.tenants))
        # Where the kills of prepare, start and cleanup strike: the move's last database,
        # after the others went through (the role's password set again for them, say).
        self.last = (self.db, *self.tenants)[-1]
        tag = uuid.uuid4().hex[:6]
        self.role, self.clerk, self.password = f"app_{tag}", f"clerk_{tag}", uuid.uuid4().hex
        self.tables = [*load_sql.table_names(scenario.load_tables), load_sql.KEYLESS]
        self.restarts: list[tuple[float, float]] = []
        self.switching: list[float] = []
        self.stack = ExitStack()  # what runs beside the move (PgBouncer), ended by close

    def cutover(self, *args: str, failpoint: str | None = None) -> Result:
        env = {FAILPOINT: failpoint} if failpoint else None
        return run_cutover(args[0], "-p", str(self.plan), *args[1:], env=env, timeout=300)

    def build(self) -> None:
        """Roles, database, tables and rows; the plan; the write load and the churn."""
        for side in ("source", "target"):
            with connect(self.lab.server(side)) as conn:
                for name in (self.role, self.clerk):
                    load_sql.ensure_login_role(conn, name, self.password)  # type: ignore[arg-type]
        ident = sql.Identifier
        with connect(self.lab.server("source")) as conn:
            conn.execute(
                sql.SQL("ALTER DATABASE {} OWNER TO {}").format(ident(self.db), ident(self.role))
            )
        with connect(self.lab.server("source"), self.db) as conn:
            load_sql.create_schema(  # type: ignore[arg-type]
                conn,
                tables=self.scenario.load_tables,
                writer=self.clerk,
                owner=self.role,
                keyless=True,
            )
            world.create(conn, self.scenario, owner=self.role, writer=self.clerk)
        for tenant in self.tenants:
            with connect(self.lab.server("source")) as conn:
                conn.execute(
                    sql.SQL("ALTER DATABASE {} OWNER TO {}").format(ident(tenant), ident(self.role))
                )
            with connect(self.lab.server("source"), tenant) as conn:
                conn.execute(sql.SQL("SET ROLE {}").format(ident(self.role)))
                conn.execute(TENANT)
                self.write_tenant(conn)
        env = self.work / "app.env"
        control = free_port()
        users = {self.role: self.password, self.clerk: self.password}
        writers, repoint = application(
            self.stack, self.lab, self.db, env, users, control, pooled=self.scenario.pooled
        )
        move = f"s{uuid.uuid4().hex[:8]}"
        data = yaml.safe_load(dump(self.lab.plan([self.db, *self.tenants], move=move)))
        # The replication reaches the source through a relay that can cut or stall it.
        self.relay = Relay(("127.0.0.1", self.lab.server("source").port))
        data["source"]["replication_port"] = self.relay.port
        data.update(
            state_dir=str(self.work / "state"),
            engine=self.scenario.engine,
            writers=[{**w, "tier": 1} for w in writers] + self.slow_writer(),
            repoint=repoint,
            fence={"roles": [self.role, self.clerk]},
            thresholds={
                "lag_window": "1s",
                "switch_timeout": "5s",
                "drain_timeout": "10s",
                "ready_timeout": "90s",
            },
        )
        self.plan = self.work / "plan.yaml"
        self.plan.write_text(yaml.safe_dump(data))
        self.log_path = self.work / "writes.jsonl"
        self.handle = self.log_path.open("a")
        self.load = load.Load(
            env_file=env,
            keys=("DATABASE_URL", "WRITER_URL"),
            tables=self.tables,
            log=load.WriteLog(self.handle),
            rate=self.scenario.rate,
        )
        self.thread = threading.Thread(
            target=self.load.run, kwargs={"port": control, "duration": None}, daemon=True
        )
        self.thread.start()
        self.churn = world.Churn(
            self.lab.server("source"), self.db, self.role, self.password, self.scenario
        ).start()

    @staticmethod
    def write_tenant(conn: Any) -> None:
        """Rows into a tenant's keyed and keyless tables, as the application."""
        conn.execute(
            "INSERT INTO accounts (name) SELECT 'a' || g FROM generate_series(1, 50) g;"
            "INSERT INTO notes (body) SELECT 'n' || g FROM generate_series(1, 20) g"
        )

    def write_tenants(self) -> None:
        """More rows in every tenant, while the move streams."""
        for tenant in self.tenants:
            with connect(self.lab.server("source"), tenant) as conn:
                conn.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(self.role)))
                self.write_tenant(conn)

    def slow_writer(self) -> list[dict[str, Any]]:
        """With SLOW_WRITER, a tier stopped first that takes seconds to stop (a slow drain)."""
        slow = next((f for f in self.scenario.faults if f.fault is Fault.SLOW_WRITER), None)
        if slow is None:
            return []
        stop = ["sleep", str(slow.seconds)]
        return [{"name": "slow", "tier": 0, "command": {"stop": stop, "start": ["true"]}}]

    def close(self) -> None:
        """The churn and the load stopped (whatever of them was started)."""
        if hasattr(self, "churn"):
            self.churn.end()
        if hasattr(self, "thread"):
            self.load.stop.set()
            self.thread.join(timeout=30)
            self.handle.close()
        self.stack.close()

    # -- faults ------------------------------------------------------------------------------

    def restart(self, side: str) -> None:
        began = time.time()
        self.lab.restart(side)
        self.restarts.append((began, time.time()))

    def cut_replication(self) -> None:
        """Every replication connection cut between the servers, three times."""
        for _ in range(3):
            self.relay.cut()
            time.sleep(0.5)

    def stall(self, seconds: float) -> None:
        """No replication byte passes between the servers for `seconds`."""
        self.relay.stall(seconds)

    def set_replication(self, *, enabled: bool) -> None:
        name = f"cutover_{yaml.safe_load(self.plan.read_text())['move']}"
        set_subscription(self.lab, self.db, self.scenario.engine, name, enabled=enabled)

    def hold_lock(self, seconds: float) -> threading.Thread:
        """A session on the target that locks one of the load's tables for `seconds`."""

        def hold() -> None:
            with connect(self.lab.server("target"), self.db) as conn, conn.transaction():
                conn.execute(
                    sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(
                        sql.Identifier(self.tables[0])
                    )
                )
                time.sleep(seconds)

        thread = threading.Thread(target=hold, daemon=True)
        thread.start()
        return thread


def expect(outcome: Outcome, what: str, result: Result, *codes: int) -> bool:
    if result.code in codes:
        return True
    said = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if line.strip() and "rows read" not in line
    ]
    outcome.problems.append(f"{what} exited {result.code}: " + "\n".join(said[-25:]))
    return False


GOES_ON = (None, -9, 0)  # not drawn, killed, or finished with nothing to kill at its step


def killed(move: Move, outcome: Outcome, fault: Fault, scope: str, *command: str) -> int | None:
    """With `fault` drawn, the command run to be SIGKILLed after the fault's step.

    Its exit code: -9 killed, 0 finished (the step had nothing to do), anything
    else a failure (recorded); None when the scenario did not draw the fault.
    """
    injected = next((f for f in move.scenario.faults if f.fault is fault), None)
    if injected is None:
        return None
    point = f"{scope}/{command[0]}.{injected.step}@applied"
    result = move.cutover(*command, failpoint=point)
    expect(outcome, f"{command[0]} killed after {injected.step}", result, -9, 0)
    return result.code


def drive(move: Move, outcome: Outcome) -> bool:
    """prepare, start, streaming under faults, verify, switch: False once a command failed."""
    s = move.scenario
    faults = {f.fault: f for f in s.faults}
    if killed(move, outcome, Fault.KILL_PREPARE, move.last, "prepare") not in GOES_ON:
        return False
    if not expect(outcome, "prepare", move.cutover("prepare"), 0):
        return False
    if killed(move, outcome, Fault.KILL_START, move.last, "start", "--wait") not in GOES_ON:
        return False
    if not expect(outcome, "start --wait", move.cutover("start", "--wait"), 0):
        return False

    time.sleep(s.streaming / 2)
    for fault, act in (
        (Fault.RESTART_SOURCE, lambda: move.restart("source")),
        (Fault.RESTART_TARGET, lambda: move.restart("target")),
        (Fault.CUT_REPLICATION, move.cut_replication),
        (Fault.STALL_REPLICATION, lambda: move.stall(faults[Fault.STALL_REPLICATION].seconds)),
    ):
        if fault in faults:
            time.sleep(faults[fault].seconds)
            act()
    move.write_tenants()  # after the faults: the tenants' streams carry them
    time.sleep(s.streaming / 2)

    move.churn.end()  # the scenario's tables are written until here, the load goes on
    if not expect(
        outcome, "verify --mode checksum", move.cutover("verify", "--mode", "checksum"), 0
    ):
        return False

    move.switching.append(time.time())
    if Fault.TIMEOUT_ROLLBACK in faults:
        move.set_replication(enabled=False)
        timed_out = move.cutover("switch", "--yes")
        move.set_replication(enabled=True)
        if not expect(outcome, "switch with the apply stopped", timed_out, 1):
            return False
        if "rolled back" not in timed_out.stderr + timed_out.stdout:
            outcome.problems.append("the timed-out switch did not say it rolled back")
    if Fault.TARGET_LOCK in faults:
        locker = move.hold_lock(faults[Fault.TARGET_LOCK].seconds)
        locked = move.cutover("switch", "--yes")
        locker.join()
        if not expect(outcome, "switch with a lock on the target", locked, 0, 1):
            return False
        if locked.code == 0:
            move.switching.append(time.time())
            return True
    code = killed(move, outcome, Fault.KILL_SWITCH, "all", "switch", "--yes")
    if code not in GOES_ON:
        return False
    if code == 0:  # the step had nothing to do: no kill, the switch went through
        move.switching.append(time.time())
        return True
    ok = expect(outcome, "switch", move.cutover("switch", "--yes"), 0)
    move.switching.append(time.time())
    return ok


def judge(move: Move, outcome: Outcome) -> None:
    """The same checks for every run."""
    lab, db = move.lab, move.db
    iso = lambda t: datetime.fromtimestamp(t, UTC).isoformat()  # noqa: E731
    journal = journal_for(load_plan(move.plan))
    fenced = journal.get("all/switch.fence_source")
    with connect(lab.server("target"), db) as conn:
        rows = {t: load_sql.rows(conn, t) for t in move.tables}  # type: ignore[arg-type]
        for table in move.tables:
            found = conn.execute(
                sql.SQL("SELECT count(*) - count(DISTINCT id) AS n FROM {}").format(
                    sql.Identifier(table)
                )
            ).fetchone()
            outcome.duplicated += found["n"] if found else 0
    audit = load.audit(
        move.log_path,
        rows,
        source_port=lab.server("source").port,
        fenced_at=fenced.ended_at if fenced else None,
        switch_window=(iso(move.switching[0]), iso(move.switching[-1])),
    )
    outcome.acknowledged, outcome.lost = audit.acknowledged, len(audit.missing)
    if audit.missing:
        outcome.problems.append(
            f"{len(audit.missing)} acknowledged writes lost: {audit.missing[:3]}"
        )
    if audit.after_fence:
        outcome.problems.append(f"the source took {audit.after_fence} writes after the fence")
    if outcome.duplicated:
        outcome.problems.append(f"{outcome.duplicated} rows twice on the target")
    pooled = move.scenario.pooled
    errors = [e for e in audit.errors if not restarted(e, move.restarts, pooled=pooled)]
    if errors:
        outcome.problems.append(f"the application saw {len(errors)} errors: {errors[:3]}")
    churn_errors = [
        e for e in move.churn.errors if not (e[1] in CONNECTION_LOST and near(e[0], move.restarts))
    ]
    if churn_errors:
        outcome.problems.append(f"the churn saw {len(churn_errors)} errors: {churn_errors[:3]}")
    outcome.churned = move.churn.transactions
    if not move.relay.accepted:
        outcome.problems.append("the replication did not go through the relay")
    pause = journal.pause(phase="switch", scope="all")
    outcome.pause = pause.writes_paused if pause else None

    with connect(lab.server("source"), db) as source, connect(lab.server("target"), db) as target:
        for table in move.scenario.tables:
            query = sql.SQL(
                "SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) AS h FROM {} t"
            ).format(sql.Identifier(table.name))
            if source.execute(query).fetchone() != target.execute(query).fetchone():
                outcome.problems.append(f"table {table.name!r} differs after the switch")
        sequences_behind(outcome, source, target, db)
    for tenant in move.tenants:
        with (
            connect(lab.server("source"), tenant) as source,
            connect(lab.server("target"), tenant) as target,
        ):
            for query, rows in (
                ("SELECT count(*) AS n, md5(string_agg(name, '|' ORDER BY id)) FROM accounts", 100),
                ("SELECT count(*) AS n, md5(string_agg(body, '|' ORDER BY body)) FROM notes", 40),
            ):
                mine, theirs = source.execute(query).fetchone(), target.execute(query).fetchone()
                if mine != theirs or mine is None or mine["n"] != rows:
                    outcome.problems.append(f"{tenant}: {query} gave {mine} and {theirs}")
            sequences_behind(outcome, source, target, tenant)

    # The role goes with the first database's cleanup, out of every database: killed there.
    dropping_role = any(
        f.fault is Fault.KILL_CLEANUP and f.step == "drop_replication_role"
        for f in move.scenario.faults
    )
    scope = db if dropping_role else move.last
    if killed(move, outcome, Fault.KILL_CLEANUP, scope, "cleanup", "--yes") not in GOES_ON:
        return
    if not expect(outcome, "cleanup", move.cutover("cleanup", "--yes"), 0):
        return
    for each in (db, *move.tenants):
        left = {k: v for k, v in replication_objects(lab, each).items() if v}
        if left:
            outcome.problems.append(f"cleanup left in {each}: {left}")
    move_name = yaml.safe_load(move.plan.read_text())["move"]
    for side, each in itertools.product(("source", "target"), (db, *move.tenants)):
        with connect(lab.server(side), each) as conn:
            roles = conn.execute(
                "SELECT count(*) AS n FROM pg_roles WHERE rolname = %s", (f"cutover_{move_name}",)
            ).fetchone()
            columns = conn.execute(
                "SELECT count(*) AS n FROM information_schema.columns "
                "WHERE column_name = 'cutover_id'"
            ).fetchone()
            if roles != {"n": 0} or columns != {"n": 0}:
                outcome.problems.append(
                    f"cleanup left on the {side}: {roles} role, {columns} column"
                )


def sequences_behind(outcome: Outcome, source: Any, target: Any, db: str) -> None:
    """A problem for each sequence of `db` the target is behind the source on."""
    seqs = "SELECT schemaname, sequencename, last_value FROM pg_sequences"
    ahead = {(r["schemaname"], r["sequencename"]): r["last_value"] for r in target.execute(seqs)}
    for r in source.execute(seqs):
        theirs = ahead.get((r["schemaname"], r["sequencename"]))
        if r["last_value"] is not None and (theirs is None or theirs < r["last_value"]):
            outcome.problems.append(
                f"{db}: sequence {r['sequencename']!r} at {theirs} on the target, "
                f"{r['last_value']} on the source"
            )


def near(at: float, windows: list[tuple[float, float]], grace: float = RESTART_GRACE) -> bool:
    return any(began - 1 <= at <= ended + grace for began, ended in windows)


def restarted(error: str, windows: list[tuple[float, float]], *, pooled: bool = False) -> bool:
    """An error the load saw because a server restarted (its time is the line's start).

    Through PgBouncer, a login the restarting server refused makes the pool answer
    every client "server login has been failing" (08P01) for `server_login_retry`.
    """
    at = datetime.fromisoformat(error.split(" ", 1)[0]).timestamp()
    code = error.split("[", 1)[1].split("]", 1)[0] if "[" in error else ""
    if pooled and code == "08P01" and "server_login_retry" in error:
        return near(at, windows, RESTART_GRACE + PGBOUNCER_LOGIN_RETRY)
    return code in CONNECTION_LOST | {"None"} and near(at, windows)


def run(lab: Lab, databases: Databases, seed: int, work: Path) -> Outcome:
    """One seeded move, driven and judged."""
    scenario = generate(seed)
    outcome = Outcome(seed, scenario.engine, [f.fault.value for f in scenario.faults])
    began = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    move = Move(lab, databases, scenario, work)
    try:
        move.build()
        driven = drive(move, outcome)
        move.load.stop.wait(1.0)  # the application writes on the target a while
        move.close()
        if driven:
            judge(move, outcome)
    except Exception as exc:  # a run that breaks is a failed run, with its seed
        outcome.problems.append(f"{type(exc).__name__}: {exc}")
    finally:
        move.close()
        databases.stop_replication()
        if hasattr(move, "relay"):
            move.relay.close()
        outcome.seconds = round(time.monotonic() - began, 1)
    return outcome


def seeds(text: str) -> list[int]:
    """`1-50`, `7,9,12` or a mix."""
    found: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        found += list(range(int(first), int(last or first) + 1))
    return found


def summary(outcomes: list[Outcome]) -> str:
    lines = []
    faults = Counter(f for o in outcomes for f in o.faults)
    lines.append(f"runs: {len(outcomes)}, failed: {sum(not o.ok for o in outcomes)}")
    lines.append("faults: " + ", ".join(f"{k} {v}" for k, v in sorted(faults.items())))
    for engine in sorted({o.engine for o in outcomes}):
        mine = [o for o in outcomes if o.engine == engine]
        pauses = [o.pause for o in mine if o.pause is not None]
        lines.append(
            f"{engine}: runs {len(mine)}, acknowledged {sum(o.acknowledged for o in mine)}, "
            f"lost {sum(o.lost for o in mine)}, duplicated {sum(o.duplicated for o in mine)}, "
            f"pause median {statistics.median(pauses) * 1000:.0f} ms, "
            f"worst {max(pauses) * 1000:.0f} ms"
            if pauses
            else f"{engine}: runs {len(mine)}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None, *, out: Callable[[str], None] = print) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1-10", help="e.g. 1-50, or 7,9 to replay")
    parser.add_argument("--report", type=Path, help="write every run's outcome here (JSON)")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # the lab is taken down still
    outcomes: list[Outcome] = []
    with tempfile.TemporaryDirectory(prefix="cutover-soak-") as tmp:
        lab = Lab(Path(tmp) / "lab")
        lab.up(sample=False)
        try:
            databases = Databases(lab)
            for seed in seeds(args.seeds):
                out(generate(seed).describe())
                outcome = run(lab, databases, seed, Path(tmp) / f"run-{seed}")
                outcomes.append(outcome)
                pause = f"{outcome.pause * 1000:.0f} ms" if outcome.pause is not None else "-"
                verdict = "ok" if outcome.ok else "FAILED: " + "; ".join(outcome.problems)
                out(
                    f"  seed {seed}: {verdict} ({outcome.acknowledged} acknowledged, "
                    f"pause {pause}, {outcome.seconds} s)"
                )
        finally:
            lab.down(purge=True)
    out(summary(outcomes))
    if args.report:
        args.report.write_text(json.dumps([asdict(o) for o in outcomes], indent=1) + "\n")
    failed = [o.seed for o in outcomes if not o.ok]
    if failed:
        out(f"failed seeds: {','.join(map(str, failed))} (replay: --seeds {failed[0]})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
