"""The ledger's document model, the Store protocol, and the Journal that writes it."""

import getpass
import hashlib
import json
import os
import socket
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol, runtime_checkable

from cutover.log import redact
from cutover.steps import Outcome, StepStatus, SwitchStep

FORMAT_VERSION = 1
# Without indentation json's C encoder writes a document, 2.8 times faster (3,000 step
# records: 40 ms against 112 ms).
COMPACT = (",", ":")
# A log is folded into its document once it holds more bytes than the document and this
# (see Journal): each byte is then written about twice in all, and a small move's
# records stay in the log until the command's end.
FOLD = 256 * 1024


def dumps(data: Any) -> str:
    """`data` as the ledger writes JSON: compact."""
    return json.dumps(data, separators=COMPACT)


def now() -> str:
    """The current time as ISO 8601 in UTC, to the millisecond."""
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def actor() -> str:
    """Who is acting: user@host and process id, for the audit trail."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"{user}@{socket.gethostname()} pid {os.getpid()}"


@dataclass(frozen=True)
class StepRecord:
    """The last known state of one step (`scope/phase.step`)."""

    key: str
    status: StepStatus
    started_at: str
    ended_at: str | None = None
    seconds: float | None = None
    outcome: Outcome | None = None
    error: str | None = None
    runs: int = 1
    phase: str | None = None  # the phase's name and the scope it ran for (older records: None)
    scope: str | None = None
    # Started durable (a step an undo walks). Once the document holds one, every write
    # waits for the disk: a replace that did not could leave no document at all after a
    # power loss (rename without a sync, on XFS). Older records: durable, as they were.
    durable: bool = True

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "StepRecord":
        """Read back a record written by `asdict`."""
        outcome = data.get("outcome")
        return cls(
            key=data["key"],
            status=StepStatus(data["status"]),
            started_at=data["started_at"],
            ended_at=data.get("ended_at"),
            seconds=data.get("seconds"),
            outcome=Outcome(outcome) if outcome else None,
            error=data.get("error"),
            runs=int(data.get("runs", 1)),
            phase=data.get("phase"),
            scope=data.get("scope"),
            durable=bool(data.get("durable", True)),
        )


@dataclass(frozen=True)
class Event:
    """One line of the audit trail: what ran, when, by whom, with which result."""

    at: str
    actor: str
    kind: str
    key: str | None = None
    outcome: str | None = None
    detail: str | None = None


@dataclass
class Document:
    """Everything the ledger holds for one move."""

    move: str
    steps: dict[str, StepRecord] = field(default_factory=dict)
    events: list[Event] = field(default_factory=list)
    # The move's identity: what it makes on a server is marked with it, and a plan
    # whose ledger holds another (a second plan of the same move name) is refused there.
    # A new ledger's is derived from where it is kept (`identity`): a dry run knows it
    # without writing anything, and a ledger lost and begun anew in its place keeps it.
    id: str = ""

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Document":
        """Read back the JSON form."""
        document = cls(
            move=data["move"],
            steps={k: StepRecord.from_dict(v) for k, v in data.get("steps", {}).items()},
            events=[Event(**e) for e in data.get("events", [])],
        )
        if data.get("id"):  # an older ledger has none: it gets one with its next write
            document.id = str(data["id"])
        return document


@dataclass(frozen=True)
class Pause:
    """How long the application could not write, and the switch's own share of it."""

    writes_paused: float  # first writer stopped -> last writer started
    fence_to_promote: float


def _seconds_between(start: str, end: str) -> float:
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()


class Store(Protocol):
    """Where the ledger document lives. Writes are atomic; one runner holds the lock."""

    def read(self) -> dict[str, Any] | None: ...

    def write(self, text: str, *, sync: bool = True) -> None:
        """Replace the document with `text`, a JSON object."""

    def lock(self) -> AbstractContextManager[None]: ...

    def describe(self) -> str: ...


@runtime_checkable
class Appending(Protocol):
    """A store that keeps a log beside its document: a record costs its own bytes.

    `write` replaces the document and ends the log; `read` returns the document
    with the log's entries applied (`replay`).
    """

    def append(self, line: str, *, sync: bool) -> None:
        """Add `line` (an entry: a JSON object and a newline) to the log."""


def replay(data: dict[str, Any], lines: list[str], *, where: str) -> dict[str, Any]:
    """The document `data` with the log's entries after its own (`n`) applied, in order.

    An entry is one write: the records it changed (the last of a key wins) and the
    events it added. A last line cut short is an append a crash interrupted before it
    returned: nothing was told it was written, so it is left out. Any other line that
    is not an entry is damage, and is named.
    """
    absorbed = int(data.get("n", 0))
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
            n, records, events = int(entry["n"]), entry["steps"], entry["events"]
        except (ValueError, KeyError, TypeError):
            if number == len(lines):
                break
            raise ValueError(f"line {number} of {where} is not a ledger entry") from None
        if n <= absorbed:
            continue  # written into the document already (a log its writer could not remove)
        steps = data.setdefault("steps", {})
        steps.update((record["key"], record) for record in records)
        data.setdefault("events", []).extend(events)
        data["n"] = absorbed = n
    return data


def identity(store: Store) -> str:
    """The identity of a move whose ledger is kept in `store`, before the ledger says one."""
    return hashlib.sha256(store.describe().encode()).hexdigest()[:12]


class Journal:
    """Records step transitions and events; every call is written through at once.

    But two, which `flush` writes (a runner flushes at the end of each phase):

    - `finished(..., durable=False)` is written with the next record. A run lost
      in between shows the step running, as a run killed right after the step's
      work and before its record does: the next run asks the servers (or does it
      again), which every step allows. It saves a durable write (about 5 ms) per
      step of a switch's pause.
    - `started(..., durable=False)` is written without waiting for the disk: a
      killed process loses nothing, a machine that loses power may lose the
      record, and the step is then asked of the servers as above. For steps that
      nothing undoes; the switch's stay durable, since its undo walks them. The
      wait it saves is not always 5 ms: right after a copy, the file system's
      journal commit waits for the gigabyte the servers left dirty (803 ms
      measured, and 718 ms for the last record of a `start`).

    Only while no durable record is in the document: from the first, every write
    waits for the disk (see StepRecord.durable).

    A write costs what changed, not the document: with a store that keeps a log
    (`Appending`, the file store), it appends the entries since the last write, and
    the document is written whole only once the log outgrows it, and by `close` at
    the end of a command. A ConfigMap is replaced whole at each write.
    """

    def __init__(self, store: Store, *, move: str) -> None:
        self._store = store
        data = store.read()
        self._doc = Document.from_dict(data) if data else Document(move=move)
        self._doc.id = self._doc.id or identity(store)
        # Each record and event as JSON, kept as they change: a write joins them instead
        # of converting every record again (bench/ledger.py: 200 databases' prepare and
        # start spent 112 s on that, 5 s now).
        self._records = {k: _record_json(r) for k, r in self._doc.steps.items()}
        self._events = [dumps(asdict(e)) for e in self._doc.events]
        self._unwritten = False  # a record only in memory (see finished)
        self._unsynced = False  # written, but not waited for (see started)
        # From the first durable record on, every write waits for the disk.
        self._durable = any(r.durable for r in self._doc.steps.values())
        # With a store that keeps a log, a write appends what changed since the last one
        # (one entry, numbered on from the document's `n`), and the document is written
        # whole only when the log has outgrown it, and by `close`.
        self._log = store if isinstance(store, Appending) else None
        self._n = int(data.get("n", 0)) if data else 0
        self._changed: tuple[list[str], list[str]] = ([], [])  # records, events: unappended
        self._documented = data is not None  # a document exists: the log may follow it
        self._whole = 0  # bytes of the document at its last write here
        self._logged = 0  # bytes appended since
        self._log_synced = False  # one of those appends waited for the disk

    @property
    def id(self) -> str:
        """The move's identity (see Document.id)."""
        return self._doc.id

    @property
    def where(self) -> str:
        """Where the ledger is kept, for messages."""
        return self._store.describe()

    def steps(self) -> dict[str, StepRecord]:
        """Every step record, by key."""
        return dict(self._doc.steps)

    def events(self) -> list[Event]:
        """The audit trail, oldest first."""
        return list(self._doc.events)

    def get(self, key: str) -> StepRecord | None:
        """One step's record, if it ever ran."""
        return self._doc.steps.get(key)

    def is_done(self, key: str) -> bool:
        """Whether the ledger holds the step as done."""
        record = self.get(key)
        return record is not None and record.status is StepStatus.DONE

    def running(self) -> Iterator[StepRecord]:
        """Steps left `running`: a runner died during them."""
        return (r for r in self._doc.steps.values() if r.status is StepStatus.RUNNING)

    def started(
        self,
        key: str,
        *,
        phase: str | None = None,
        scope: str | None = None,
        durable: bool = True,
    ) -> None:
        """A step of `phase` begins for `scope` (a database); not `durable`: synced by `flush`."""
        previous = self.get(key)
        runs = previous.runs + 1 if previous else 1
        self._put(
            StepRecord(
                key, StepStatus.RUNNING, now(), runs=runs, phase=phase, scope=scope, durable=durable
            )
        )
        self._append(Event(now(), actor(), "step", key, StepStatus.RUNNING.value), sync=durable)

    def finished(
        self,
        key: str,
        *,
        outcome: Outcome,
        seconds: float,
        phase: str | None = None,
        scope: str | None = None,
        durable: bool = True,
    ) -> None:
        """A step is done: applied or adopted (`phase` and `scope` for a step never started).

        Not `durable`: written with the next record, or by `flush`.
        """
        base = self.get(key) or StepRecord(
            key, StepStatus.RUNNING, now(), phase=phase, scope=scope, durable=durable
        )
        self._ended(base, StepStatus.DONE, outcome, seconds=seconds)
        event = Event(now(), actor(), "step", key, outcome.value, f"{seconds * 1000:.0f} ms")
        self._append(event, write=durable)

    def failed(self, key: str, *, error: str, seconds: float) -> None:
        """A step raised."""
        base = self.get(key) or StepRecord(key, StepStatus.RUNNING, now())
        safe = redact(error)
        self._ended(base, StepStatus.FAILED, Outcome.FAILED, seconds=seconds, error=safe)
        self._append(Event(now(), actor(), "step", key, Outcome.FAILED.value, safe))

    def undone(self, key: str) -> None:
        """A step's undo ran."""
        base = self.get(key) or StepRecord(key, StepStatus.RUNNING, now())
        self._put(replace(base, status=StepStatus.UNDONE, ended_at=now(), outcome=Outcome.UNDONE))
        self._append(Event(now(), actor(), "step", key, Outcome.UNDONE.value))

    def note(
        self, kind: str, *, detail: str, outcome: str | None = None, key: str | None = None
    ) -> None:
        """An event that is not a step transition (a command started, a fence lifted)."""
        self._append(Event(now(), actor(), kind, key, outcome, redact(detail)))

    def _span(self, key: str) -> tuple[str, str] | None:
        """When a finished step started and ended."""
        r = self._doc.steps.get(key)
        return (r.started_at, r.ended_at) if r and r.ended_at else None

    def pause_window(self, *, phase: str, scope: str) -> tuple[str, str] | None:
        """When the last switch (or rollback) stopped its first writer and started its last."""
        stop = self._span(f"{scope}/{phase}.{SwitchStep.STOP_WRITERS}")
        start = self._span(f"{scope}/{phase}.{SwitchStep.START_WRITERS}")
        return (stop[0], start[1]) if stop and start else None

    def pause(self, *, phase: str, scope: str) -> "Pause | None":
        """The write pause of the last switch (or rollback) `phase`, from its step records."""
        window = self.pause_window(phase=phase, scope=scope)
        promote = self._span(f"{scope}/{phase}.{SwitchStep.PROMOTE}")
        fence = self._span(f"{scope}/{phase}.{SwitchStep.FENCE_SOURCE}") or self._span(
            f"{scope}/{phase}.{SwitchStep.FENCE_TARGET}"
        )
        if not (window and fence and promote):
            return None
        return Pause(_seconds_between(*window), _seconds_between(fence[0], promote[1]))

    def flush(self, *, sync: bool = True) -> None:
        """Write what is not written; with `sync` (or a durable record held) wait for the disk."""
        sync = sync or self._durable
        if self._unwritten or (sync and self._unsynced):
            self._write(sync=sync)

    def close(self) -> None:
        """Write what is not written, the log folded into the document (what reads the
        document alone, jq say, finds every record): a command's last write."""
        if self._unwritten or self._logged:
            self._write_whole(sync=self._durable or self._log_synced)

    def _ended(
        self,
        base: StepRecord,
        status: StepStatus,
        outcome: Outcome,
        *,
        seconds: float,
        error: str | None = None,
    ) -> None:
        self._put(
            replace(
                base,
                status=status,
                ended_at=now(),
                seconds=round(seconds, 4),
                outcome=outcome,
                error=error,
            )
        )

    def _put(self, record: StepRecord) -> None:
        self._doc.steps[record.key] = record
        body = dumps(asdict(record))
        self._records[record.key] = f"{dumps(record.key)}:{body}"
        if self._log is not None:
            self._changed[0].append(body)

    def _append(self, event: Event, *, write: bool = True, sync: bool = True) -> None:
        """Add an event; a step's events come after its record changed (`event.key`)."""
        self._doc.events.append(event)
        body = dumps(asdict(event))
        self._events.append(body)
        if self._log is not None:
            self._changed[1].append(body)
        record = self._doc.steps.get(event.key) if event.key else None
        self._durable = self._durable or (record is not None and record.durable)
        if write:
            self._write(sync=sync or self._durable)
        else:
            self._unwritten = True

    def _write(self, *, sync: bool) -> None:
        # A write carries every record before it; a synced one waits for them all.
        fold = self._logged > max(self._whole, FOLD)
        records, events = self._changed
        if self._log is None or not self._documented or fold or not (records or events):
            self._write_whole(sync=sync or self._log_synced)  # the log it ends had waited
        else:
            # One line per write: a crash leaves the ledger as it was at one of its writes.
            self._n += 1
            line = (
                f'{{"n":{self._n},"steps":[{",".join(records)}],"events":[{",".join(events)}]}}\n'
            )
            self._log.append(line, sync=sync)
            records.clear()
            events.clear()
            self._logged += len(line)
            self._log_synced = self._log_synced or sync
        self._unwritten = False
        self._unsynced = not sync

    def _write_whole(self, *, sync: bool) -> None:
        text = self._text()
        self._store.write(text, sync=sync)
        self._changed[0].clear()
        self._changed[1].clear()
        self._documented = True
        self._whole, self._logged, self._log_synced = len(text), 0, False
        self._unwritten = False
        self._unsynced = not sync

    def _text(self) -> str:
        """The document as JSON (what `Document.from_dict` reads), from the kept parts."""
        head = dumps(
            {"format": FORMAT_VERSION, "move": self._doc.move, "id": self._doc.id, "n": self._n}
        )
        steps = ",".join(self._records.values())
        return f'{head[:-1]},"steps":{{{steps}}},"events":[{",".join(self._events)}]}}'


def _record_json(record: StepRecord) -> str:
    """One entry of the document's `steps`: `"key":{record}`."""
    return f"{dumps(record.key)}:{dumps(asdict(record))}"
