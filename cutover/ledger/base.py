"""The ledger's document model, the Store protocol, and the Journal that writes it."""

import getpass
import hashlib
import json
import logging
import os
import secrets
import socket
from collections.abc import Iterator
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Protocol

from cutover.log import redact
from cutover.steps import Outcome, StepStatus, SwitchStep

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
# Without indentation json's C encoder writes a document, 2.8 times faster (3,000 step
# records: 40 ms against 112 ms).
COMPACT = (",", ":")


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
    # Started durable (a step an undo walks). Once the document holds one, every write of
    # the document waits for the disk (see Journal._write_whole); an append to its log
    # only when asked. Older records: durable, as they were.
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
        if data.get("id"):  # an older ledger has none: it gets one with its next whole write
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
    """Where the ledger document lives, and a log of the writes since its last whole write
    (a record costs its own bytes). Writes are atomic; one runner holds the lock.

    `write` replaces the document and ends the log; `read` returns the document with
    the log's lines applied (`replay`).
    """

    # Whether the last `read` found lines beside the document: a command killed before
    # its end left them, its last line perhaps cut short, so nothing may follow them.
    found_log: bool

    def read(self) -> dict[str, Any] | None: ...

    def write(self, text: str, *, sync: bool = True) -> None:
        """Replace the document with `text`, a JSON object, and end the log."""

    def append(self, line: str, *, sync: bool) -> None:
        """Add `line` (a JSON object and a newline) to the log."""

    def sync(self) -> None:
        """Wait for the disk for what was written without waiting."""

    def fold_at(self) -> int:
        """The bytes of log past which the Journal writes the document whole again."""

    def lock(self) -> AbstractContextManager[None]: ...

    def describe(self) -> str: ...


def replay(data: dict[str, Any], lines: list[bytes], *, where: str) -> dict[str, Any]:
    """The document `data` with the log's lines of its generation (`log`) applied, in order.

    A line is one write: the records it changed (the last of a key wins) and the events
    it added. Lines of another generation are not the document's: written before its
    last whole write (which holds them) or beside a document put back from a backup.
    A last line that is not whole is an append a crash cut short: nothing was told it
    was written, so it is left out. Any other such line is damage: ValueError, named.
    """
    generation = data.get("log")
    for number, line in enumerate(lines, start=1):
        try:
            entry = json.loads(line)
            if entry["log"] != generation:
                continue
            records = [(StepRecord.from_dict(r).key, r) for r in entry["steps"]]
            events = entry["events"]
            for event in events:
                Event(**event)  # one that does not read back is damage
        except (ValueError, KeyError, TypeError):
            if number == len(lines):
                break
            raise ValueError(f"line {number} of {where} is not a ledger entry") from None
        data.setdefault("steps", {}).update(records)
        data.setdefault("events", []).extend(events)
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

    A write costs what changed, not the document: it appends to the store's log a line
    of what changed since the last write, and the document is written whole only past
    the store's `fold_at`, and by `close` at the end of a command. Once the document holds
    a durable record, every whole write waits for the disk (StepRecord.durable).
    """

    def __init__(self, store: Store, *, move: str) -> None:
        self._store = store
        data = store.read()
        self._doc = Document.from_dict(data) if data else Document(move=move)
        self._doc.id = self._doc.id or identity(store)
        # Each record and event as JSON, kept as they change: a write joins them instead
        # of converting every record again.
        self._records = {k: _record_json(k, dumps(asdict(r))) for k, r in self._doc.steps.items()}
        self._events = [dumps(asdict(e)) for e in self._doc.events]
        self._unwritten = False  # a record only in memory (see finished)
        self._unsynced = False  # written, but not waited for (see started)
        # From the first durable record on, every whole write waits for the disk.
        self._durable = any(r.durable for r in self._doc.steps.values())
        # With a store that keeps a log, a write appends a line of what changed since the
        # last one, marked with the document's generation; the document is written whole
        # (a new generation) when the log has outgrown it, and by `close`.
        generation = data.get("log") if data else None
        self._generation = generation if isinstance(generation, str) else ""
        self._new_records: list[str] = []  # changed since the last write
        self._new_events: list[str] = []
        # The next write is whole: there is no document yet, or one without a generation
        # (written before the log), or a log lies beside it that a killed command left
        # (its last line may be cut short), or an append failed.
        found = store.found_log
        self._whole_next = not self._generation or found
        self._logged = 0  # bytes appended since the document's last write
        self._log_synced = found  # lines it holds waited for the disk (a found log's may have)

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
            self._write_whole(sync=False)

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
        self._records[record.key] = _record_json(record.key, body)
        self._new_records.append(body)

    def _append(self, event: Event, *, write: bool = True, sync: bool = True) -> None:
        """Add an event; a step's events come after its record changed (`event.key`)."""
        self._doc.events.append(event)
        body = dumps(asdict(event))
        self._events.append(body)
        self._new_events.append(body)
        record = self._doc.steps.get(event.key) if event.key else None
        self._durable = self._durable or (record is not None and record.durable)
        if write:
            self._write(sync=sync)
        else:
            self._unwritten = True

    def _write(self, *, sync: bool) -> None:
        """Write what changed; a write carries every record before it, a synced one waits
        for them all."""
        if self._whole_next or self._logged > self._store.fold_at():
            self._write_whole(sync=sync)
            return
        if not (self._new_records or self._new_events):  # nothing new: a sync, if asked
            if sync:
                self._store.sync()
                self._unsynced = False
            return
        # One line per write: a log cut anywhere reads as the ledger at one of its writes.
        head = dumps({"log": self._generation})[:-1]
        line = (
            f'{head},"steps":[{",".join(self._new_records)}],'
            f'"events":[{",".join(self._new_events)}]}}\n'
        )
        try:
            self._store.append(line, sync=sync)
        except Exception as exc:
            # Part of the line may be in the log, or the log is gone (a ConfigMap deleted or
            # edited): the document whole instead, a new generation, which leaves it out.
            log.warning("%s: the ledger's log: %s; writing it whole", self.where, exc)
            self._write_whole(sync=sync)
            return
        except BaseException:
            self._whole_next = True  # interrupted: nothing may be appended after it
            raise
        self._written(sync=sync)
        self._logged += len(line)
        self._log_synced = self._log_synced or sync

    def _write_whole(self, *, sync: bool) -> None:
        """Replace the document; it waits for the disk also when it holds a durable record
        (a replace that did not could leave no document at all after a power loss: rename
        without a sync, on XFS) and when it ends a log that had. One that fails leaves
        the next write (or `close`) to write it whole again: what is on disk is unknown."""
        sync = sync or self._durable or self._log_synced
        self._generation = secrets.token_hex(6)
        try:
            self._store.write(self._text(), sync=sync)
        except BaseException:
            self._whole_next = self._unwritten = True
            raise
        self._written(sync=sync)
        self._whole_next = False
        self._logged, self._log_synced = 0, False

    def _written(self, *, sync: bool) -> None:
        """Every change is written now; with `sync`, on disk too."""
        self._new_records.clear()
        self._new_events.clear()
        self._unwritten = False
        self._unsynced = not sync

    def _text(self) -> str:
        """The document as JSON (what `Document.from_dict` reads), from the kept parts."""
        head = {
            "format": FORMAT_VERSION,
            "move": self._doc.move,
            "id": self._doc.id,
            "log": self._generation,
        }
        steps = ",".join(self._records.values())
        return f'{dumps(head)[:-1]},"steps":{{{steps}}},"events":[{",".join(self._events)}]}}'


def _record_json(key: str, body: str) -> str:
    """One entry of the document's `steps`: `"key":{record}`."""
    return f"{dumps(key)}:{body}"
