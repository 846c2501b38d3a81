"""A move drawn from a seed: its schema, its write load, its engine and its faults.

The same seed always draws the same scenario, so a failing run is replayed by
running its seed again (`make soak SEEDS=1234`). Nothing here touches a server.
"""

import random
from dataclasses import dataclass
from enum import StrEnum

ENGINES = ("native", "pglogical")
# Names a real schema has, and names that break a tool that formats SQL with strings.
NAMES = (
    "orders",
    "Order Items",
    "select",
    'a"quote',
    "semi;colon",
    "ünïcødé",
    "MixedCase",
    "with space",
    "drop table x; --",
    "x'y",
)
COLUMN_TYPES = ("enum", "array", "json", "bytea", "toast", "numeric", "timestamptz")


class Kind(StrEnum):
    """How a generated table is keyed."""

    IDENTITY = "identity"  # id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY
    SERIAL = "serial"  # id bigserial PRIMARY KEY
    SHARED = "shared"  # id from a standalone sequence that several tables share
    KEYLESS = "keyless"  # no key at all: prepare backfills one
    PARTITIONED = "partitioned"  # range-partitioned on its key, two partitions
    CHILD = "child"  # a foreign key to the first keyed table


class Fault(StrEnum):
    """What goes wrong in a run."""

    KILL_START = "kill_start"  # SIGKILL of `start` after a step, then start again
    KILL_SWITCH = "kill_switch"  # SIGKILL of `switch` after a step, then switch again
    RESTART_SOURCE = "restart_source"  # while streaming
    RESTART_TARGET = "restart_target"  # while streaming
    CUT_REPLICATION = "cut_replication"  # the replication connections ended, again and again
    TARGET_LOCK = "target_lock"  # a session locks a table on the target during the switch
    TIMEOUT_ROLLBACK = "timeout_rollback"  # the apply stopped: the switch times out, rolls back
    KILL_PREPARE = "kill_prepare"  # SIGKILL of `prepare` after a step, then prepare again
    KILL_CLEANUP = "kill_cleanup"  # SIGKILL of `cleanup` after a step, then cleanup again
    SLOW_WRITER = "slow_writer"  # a writer tier that takes seconds to stop
    STALL_REPLICATION = "stall_replication"  # the target applies nothing for a while


PREPARE_STEPS = (
    "create_target_database",
    "create_source_barrier",
    "install_engine",
    "create_replication_role",
    "copy_schema",
    "create_target_barrier",
    "create_publication",
)
CLEANUP_STEPS = (
    "drop_ddl_guard",
    "drop_subscription",
    "drop_slot",
    "drop_publication",
    "drop_backfilled_keys",
    "drop_barrier_tables",
    "drop_replication_role",
    "uninstall_engine",
)
START_STEPS = {
    "native": ("copy_data", "restore_post_data", "start_streaming", "wait_for_catchup"),
    "pglogical": ("restore_post_data", "copy_data"),
}
# The switch's steps a run of the soak's plan goes through (no large objects, no fallback).
SWITCH_STEPS = (
    "check_ready",
    "copy_sequences_ahead",
    "stop_writers",
    "fence_source",
    "wait_for_barrier",
    "copy_sequences",
    "verify_counts",
    "promote",
    "release_source",
    "repoint",
    "start_writers",
    "check_writers",
)


@dataclass(frozen=True)
class Table:
    """A generated table of the application's, beside the audited load's tables."""

    name: str
    kind: Kind
    columns: tuple[str, ...]  # of COLUMN_TYPES
    rows: int


@dataclass(frozen=True)
class Injected:
    """One fault, and where it strikes (a step, or seconds into streaming, or a hold)."""

    fault: Fault
    step: str = ""
    seconds: float = 0.0


@dataclass(frozen=True)
class Scenario:
    """Everything a run does, drawn from `seed`."""

    seed: int
    engine: str
    load_tables: int  # the audited load's tables (plus its keyless one)
    rate: int  # the audited load's writes per second
    tables: tuple[Table, ...]
    faults: tuple[Injected, ...]
    streaming: float  # seconds of streaming under load before the switch
    churners: int  # sessions writing the generated tables in transactions
    long_transactions: bool
    view: bool  # a materialized view over the first generated table
    tenants: int = 0  # more databases in the move, each a keyed and a keyless table
    pooled: bool = False  # the application reaches the source through PgBouncer

    def has(self, fault: Fault) -> bool:
        return any(f.fault is fault for f in self.faults)

    def describe(self) -> str:
        kinds = ",".join(t.kind for t in self.tables)
        faults = ",".join(f"{f.fault}{'@' + f.step if f.step else ''}" for f in self.faults)
        tenants = f", {self.tenants} more databases" if self.tenants else ""
        pooled = ", through PgBouncer" if self.pooled else ""
        return (
            f"seed {self.seed}: {self.engine}, {self.load_tables} load tables at {self.rate}/s, "
            f"tables [{kinds}]{tenants}{pooled}, faults [{faults or 'none'}]"
        )


# Where each fault strikes: after a step of its command, or for seconds drawn in a range.
KILLED_AT = {
    Fault.KILL_PREPARE: PREPARE_STEPS,
    Fault.KILL_SWITCH: SWITCH_STEPS,
    Fault.KILL_CLEANUP: CLEANUP_STEPS,
}
SECONDS = {
    Fault.TARGET_LOCK: (0.5, 8.0),
    Fault.SLOW_WRITER: (0.5, 4.0),
    Fault.STALL_REPLICATION: (0.5, 3.0),
}


def draw(fault: Fault, rng: random.Random, engine: str) -> Injected:
    """The fault, with the step or the seconds it strikes at."""
    if fault is Fault.KILL_START:
        return Injected(fault, step=rng.choice(START_STEPS[engine]))
    if fault in KILLED_AT:
        return Injected(fault, step=rng.choice(KILLED_AT[fault]))
    low, high = SECONDS.get(fault, (0.2, 1.5))
    return Injected(fault, seconds=round(rng.uniform(low, high), 1))


def generate(seed: int) -> Scenario:
    """The scenario of `seed`: always the same one."""
    rng = random.Random(seed)
    engine = rng.choice(ENGINES)
    names = rng.sample(NAMES, rng.randint(3, 6))
    tables: list[Table] = []
    for i, name in enumerate(names):
        # The first is what CHILD tables reference.
        kind = rng.choice((Kind.IDENTITY, Kind.SERIAL) if i == 0 else tuple(Kind))
        columns = tuple(sorted(rng.sample(COLUMN_TYPES, rng.randint(1, 4))))
        tables.append(Table(name, kind, columns, rng.randint(20, 400)))
    faults: list[Injected] = []
    for fault in list(Fault)[:7]:  # in the order they were first drawn: seeds replay
        if rng.random() < 0.3:
            faults.append(draw(fault, rng, engine))
    # A timed-out switch and a kill in the switch are two runs of it: keep one.
    if any(f.fault is Fault.TIMEOUT_ROLLBACK for f in faults):
        faults = [f for f in faults if f.fault is not Fault.KILL_SWITCH]
    load_tables = rng.randint(2, 8)
    rate = rng.choice((100, 200, 300))
    streaming = round(rng.uniform(1.0, 4.0), 1)
    churners = rng.randint(1, 3)
    long_transactions = rng.random() < 0.5
    view = rng.random() < 0.6
    for fault in list(Fault)[7:]:
        if rng.random() < 0.3:
            faults.append(draw(fault, rng, engine))
    tenants = rng.choice((0, 0, 1, 2))  # drawn last: what earlier draws gave stays
    pooled = rng.random() < 0.3
    return Scenario(
        seed=seed,
        engine=engine,
        load_tables=load_tables,
        rate=rate,
        tables=tuple(tables),
        faults=tuple(faults),
        streaming=streaming,
        churners=churners,
        long_transactions=long_transactions,
        view=view,
        tenants=tenants,
        pooled=pooled,
    )
