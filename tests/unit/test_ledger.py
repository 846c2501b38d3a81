"""The ledger: durable, atomic, locked, and free of secrets."""

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cutover.errors import LedgerLocked, UsageError
from cutover.ledger import FileStore, Journal
from cutover.log import register_secret
from cutover.steps import Outcome, StepStatus


def test_records_survive_a_new_reader(tmp_path: Path) -> None:
    journal = Journal(FileStore(tmp_path, "m"), move="m")
    journal.started("app/prepare.a")
    journal.finished("app/prepare.a", outcome=Outcome.APPLIED, seconds=0.25)
    journal.started("app/prepare.b")
    journal.failed("app/prepare.b", error="boom", seconds=1.0)

    again = Journal(FileStore(tmp_path, "m"), move="m")
    a, b = again.get("app/prepare.a"), again.get("app/prepare.b")
    assert a is not None and a.status is StepStatus.DONE and a.outcome is Outcome.APPLIED
    assert a.seconds == 0.25
    assert b is not None and b.status is StepStatus.FAILED and b.error == "boom"
    assert [e.outcome for e in again.events()] == ["running", "applied", "running", "failed"]
    assert all("pid" in e.actor for e in again.events())


def test_a_finished_record_not_durable_is_written_with_the_next_one(tmp_path: Path) -> None:
    store = FileStore(tmp_path, "m")
    journal = Journal(store, move="m")
    journal.started("db/switch.fence_source")
    journal.finished("db/switch.fence_source", outcome=Outcome.APPLIED, seconds=0.1, durable=False)
    # Lost now, the run reads as one killed after the step's work: the step shows running.
    assert Journal(store, move="m").steps()["db/switch.fence_source"].status is StepStatus.RUNNING
    journal.started("db/switch.wait_for_barrier")
    steps = Journal(store, move="m").steps()
    assert steps["db/switch.fence_source"].status is StepStatus.DONE
    assert steps["db/switch.wait_for_barrier"].status is StepStatus.RUNNING
    journal.finished(
        "db/switch.wait_for_barrier", outcome=Outcome.APPLIED, seconds=0.1, durable=False
    )
    journal.flush()
    assert Journal(store, move="m").is_done("db/switch.wait_for_barrier")


def test_a_start_not_durable_survives_a_kill_and_waits_for_the_disk_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])
    store = FileStore(tmp_path, "m")
    journal = Journal(store, move="m")
    journal.started("db/start.copy_data", durable=False)
    journal.finished("db/start.copy_data", outcome=Outcome.APPLIED, seconds=1.0, durable=False)
    journal.started("db/start.restore_post_data", durable=False)
    journal.finished(
        "db/start.restore_post_data", outcome=Outcome.ADOPTED, seconds=0.1, durable=False
    )
    journal.flush(sync=False)  # the end of start's phase: written, the disk not waited for
    assert synced == []
    # What a killed process wrote is there for the next one: the rename is done.
    steps = Journal(store, move="m").steps()
    assert steps["db/start.copy_data"].status is StepStatus.DONE
    assert steps["db/start.restore_post_data"].outcome is Outcome.ADOPTED
    journal.flush()
    assert len(synced) == 3  # the log, the document, then the folder that names them
    journal.flush()  # nothing left to sync
    assert len(synced) == 3
    journal.started("db/switch.stop_writers")  # durable: on disk before the step's work
    assert len(synced) == 4  # appended: the log alone
    # A record that no undo walks is appended without waiting, as before.
    journal.started("db/cleanup.drop_slot", durable=False)
    assert len(synced) == 4
    # The next command's journal, this one killed (no close): its first write is the
    # document whole, waited for, since the log left may end in a line cut short, after
    # which nothing may be appended.
    again = Journal(FileStore(tmp_path, "m"), move="m")
    again.started("db/cleanup.drop_publication", durable=False)
    assert len(synced) == 6 and not store.log_path.exists()
    again.started("db/cleanup.drop_role", durable=False)
    assert len(synced) == 6
    # From the first record an undo walks, the document is never replaced without
    # waiting for the disk: the close folds the log in and waits.
    again.close()
    assert len(synced) == 8 and not store.log_path.exists()
    assert Journal(store, move="m").steps().keys() == again.steps().keys()


JUNK = st.one_of(
    st.binary(max_size=40).filter(lambda b: b"\n" not in b),
    st.sampled_from(
        [b'{"log":"x"}', b"[]", b'{"steps":"s","events":3}', b"null", b'{"log":null,"steps":[{}]}']
    ),
)


@settings(max_examples=80, deadline=None)
@given(JUNK, st.booleans())
def test_a_damaged_log_is_left_out_when_last_and_named_when_not(junk: bytes, last: bool) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = FileStore(Path(tmp), "m")
        journal = Journal(store, move="m")
        for i in range(3):
            journal.note("test", detail=str(i))
        log = store.log_path.read_bytes()
        generation = json.loads(store.path.read_text())["log"]
        junk = junk.replace(b'"x"', json.dumps(generation).encode())  # of this generation
        store.log_path.write_bytes(log + junk if last else junk + b"\n" + log)
        try:
            events = Journal(FileStore(Path(tmp), "m"), move="m").events()
        except UsageError as exc:
            assert not last and "line 1 of" in exc.message
        else:
            assert [e.detail for e in events] == ["0", "1", "2"]


def test_a_record_written_before_records_said_whether_they_are_durable_counts_as_durable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(tmp_path, "m")
    Journal(store, move="m").started("db/switch.promote")
    data = json.loads(store.path.read_text())
    del data["steps"]["db/switch.promote"]["durable"]
    store.path.write_text(json.dumps(data))
    synced: list[int] = []
    monkeypatch.setattr(os, "fsync", synced.append)
    journal = Journal(store, move="m")
    journal.started("db/cleanup.drop_slot", durable=False)  # appended, not waited for
    assert not synced
    journal.close()  # the document replaced: it holds a durable record, so it waits
    assert synced


def test_a_document_written_before_the_log_is_written_whole_first(tmp_path: Path) -> None:
    store = FileStore(tmp_path, "m")
    Journal(store, move="m").started("db/switch.promote")
    data = json.loads(store.path.read_text())
    del data["log"]  # as a version without the log wrote it
    store.path.write_text(json.dumps(data))
    journal = Journal(store, move="m")
    journal.started("db/cleanup.drop_slot", durable=False)
    journal.started("db/cleanup.drop_role", durable=False)
    steps = Journal(FileStore(tmp_path, "m"), move="m").steps()
    assert list(steps) == ["db/switch.promote", "db/cleanup.drop_slot", "db/cleanup.drop_role"]


def test_a_rerun_counts_runs_and_clears_the_old_error(tmp_path: Path) -> None:
    journal = Journal(FileStore(tmp_path, "m"), move="m")
    journal.started("k")
    journal.failed("k", error="boom", seconds=0.1)
    journal.started("k")
    journal.finished("k", outcome=Outcome.APPLIED, seconds=0.1)
    record = journal.get("k")
    assert record is not None and record.runs == 2 and record.error is None


def test_a_step_left_running_is_reported_as_interrupted(tmp_path: Path) -> None:
    journal = Journal(FileStore(tmp_path, "m"), move="m")
    journal.started("app/switch.fence_source")
    assert [r.key for r in Journal(FileStore(tmp_path, "m"), move="m").running()] == [
        "app/switch.fence_source"
    ]


def test_writes_leave_no_temporary_files_and_the_log_is_folded_in_at_the_end(
    tmp_path: Path,
) -> None:
    journal = Journal(FileStore(tmp_path, "m"), move="m")
    for i in range(20):
        journal.note("test", detail=str(i))
    # The document's first write, then an entry per line in the log beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ledger.json", "m.ledger.jsonl"]
    assert len((tmp_path / "m.ledger.jsonl").read_text().splitlines()) == 19
    journal.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.ledger.json"]
    assert len(json.loads((tmp_path / "m.ledger.json").read_text())["events"]) == 20


def test_what_a_killed_command_appended_is_read_and_folded_in_by_the_next(
    tmp_path: Path,
) -> None:
    store = FileStore(tmp_path, "m")
    journal = Journal(store, move="m")
    journal.started("db/switch.fence_source")
    journal.finished("db/switch.fence_source", outcome=Outcome.APPLIED, seconds=0.1)
    journal.started("db/switch.promote")  # then killed: no close
    assert list(json.loads(store.path.read_text())["steps"]) == ["db/switch.fence_source"]
    again = Journal(FileStore(tmp_path, "m"), move="m")
    assert [r.key for r in again.running()] == ["db/switch.promote"]
    assert again.is_done("db/switch.fence_source") and len(again.events()) == 3
    again.undone("db/switch.promote")
    again.close()
    document = json.loads(store.path.read_text())
    assert document["steps"]["db/switch.promote"]["status"] == "undone"
    assert [e["outcome"] for e in document["events"]] == ["running", "applied", "running", "undone"]


def test_a_log_the_document_holds_already_adds_nothing_and_a_cut_line_is_left_out(
    tmp_path: Path,
) -> None:
    store = FileStore(tmp_path, "m")
    journal = Journal(store, move="m")
    for i in range(3):
        journal.note("test", detail=str(i))
    log = store.log_path.read_text()
    journal.close()
    # Killed after the document's write and before the log's removal: nothing twice.
    store.log_path.write_text(log)
    assert len(Journal(store, move="m").events()) == 3
    # An append that a crash cut short was never acknowledged: it is left out.
    store.log_path.write_text(log + '{"n":4,"steps":[],"events":[{"at":"2026-')
    assert len(Journal(store, move="m").events()) == 3
    # A damaged line with entries after it is damage, and is named.
    store.log_path.write_text("{not json\n" + log)
    with pytest.raises(UsageError, match=r"line 1 of .*m\.ledger\.jsonl"):
        Journal(store, move="m")


# Keys as a move makes them, and hostile ones: quotes, backslashes, slashes, any text.
KEYS = st.one_of(
    st.sampled_from(["db/prepare.copy_schema", 'd"b/backfill "s"."t".add_column', "all/switch.x"]),
    st.text(min_size=1, max_size=20),
)
OPERATIONS = st.lists(
    st.tuples(
        st.sampled_from(["started", "finished", "failed", "undone", "note"]),
        KEYS,
        st.booleans(),
        st.text(max_size=10),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(OPERATIONS)
def test_the_document_written_is_every_record_and_event_as_json(
    operations: list[tuple[str, str, bool, str]],
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = FileStore(Path(tmp), "m")
        journal = Journal(store, move="m")
        for operation, key, durable, text in operations:
            if operation == "started":
                journal.started(key, phase="p", scope=text, durable=durable)
            elif operation == "finished":
                journal.finished(key, outcome=Outcome.ADOPTED, seconds=0.5, durable=durable)
            elif operation == "failed":
                journal.failed(key, error=text, seconds=1.0)
            elif operation == "undone":
                journal.undone(key)
            else:
                journal.note("test", detail=text, key=key if durable else None)
        journal.flush()
        if not operations:
            return
        expected = {
            "format": 1,
            "move": "m",
            "id": journal.id,
            "steps": {k: asdict(r) for k, r in journal.steps().items()},
            "events": [asdict(e) for e in journal.events()],
        }
        again = Journal(FileStore(Path(tmp), "m"), move="m")  # the document and its log
        assert again.steps() == journal.steps() and again.events() == journal.events()
        journal.close()
        document = json.loads(store.path.read_text())
        assert isinstance(document.pop("log"), str)  # the generation of its log's lines
        assert document == json.loads(json.dumps(expected))


def test_an_append_that_failed_is_written_whole_and_not_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(tmp_path, "m")
    journal = Journal(store, move="m")
    journal.note("test", detail="first")
    real_append = FileStore.append

    def fails_after_writing(self: FileStore, line: str, *, sync: bool) -> None:
        real_append(self, line, sync=sync)
        raise OSError(5, "Input/output error")  # the fsync failed: the line is in the file

    monkeypatch.setattr(FileStore, "append", fails_after_writing)
    journal.note("test", detail="second")  # written whole instead, a new generation
    monkeypatch.setattr(FileStore, "append", real_append)
    journal.note("test", detail="third")
    details = [e.detail for e in Journal(FileStore(tmp_path, "m"), move="m").events()]
    assert details == ["first", "second", "third"]


def test_a_whole_write_that_failed_is_written_again_by_the_next_write_or_the_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = FileStore(tmp_path, "m")
    journal = Journal(store, move="m")
    journal.started("db/switch.promote")
    real_write = FileStore.write

    def full(self: FileStore, text: str, *, sync: bool = True) -> None:
        raise OSError(28, "No space left on device")

    def fails(self: FileStore, line: str, *, sync: bool) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(FileStore, "write", full)
    monkeypatch.setattr(FileStore, "append", fails)
    with pytest.raises(OSError):  # the append, then the whole write instead: both failed
        journal.finished("db/switch.promote", outcome=Outcome.APPLIED, seconds=0.1)
    with pytest.raises(OSError):
        journal.undone("db/switch.promote")  # the runner's next record: still no room
    monkeypatch.setattr(FileStore, "write", real_write)
    journal.close()  # room again: what failed is written, whole
    again = Journal(FileStore(tmp_path, "m"), move="m")
    assert again.get("db/switch.promote") == journal.get("db/switch.promote")
    assert [e.outcome for e in again.events()] == ["running", "applied", "undone"]


def test_a_document_put_back_from_a_backup_is_not_mixed_with_a_newer_log(
    tmp_path: Path,
) -> None:
    store = FileStore(tmp_path, "m")
    journal = Journal(store, move="m")
    journal.started("db/switch.promote")
    backup = store.path.read_text()
    journal.finished("db/switch.promote", outcome=Outcome.APPLIED, seconds=0.1)
    journal.close()
    journal = Journal(store, move="m")
    journal.started("db/cleanup.drop_slot")  # in a log beside the document
    store.path.write_text(backup)  # the operator puts the older document back
    again = Journal(FileStore(tmp_path, "m"), move="m")
    assert list(again.steps()) == ["db/switch.promote"]
    assert [e.outcome for e in again.events()] == ["running"]


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(KEYS, st.booleans()), min_size=1, max_size=15), st.data())
def test_a_log_cut_anywhere_reads_as_the_ledger_at_one_of_its_writes(
    steps: list[tuple[str, bool]], data: st.DataObject
) -> None:
    """A crash leaves the log cut at any byte: what is read is the ledger as it was at
    one of its writes, never a mix, never an error."""
    with tempfile.TemporaryDirectory() as tmp:
        store = FileStore(Path(tmp), "m")
        journal = Journal(store, move="m")
        seen = []
        for key, fails in steps:
            journal.started(key, durable=False)
            seen.append((journal.steps(), journal.events()))
            if fails:
                journal.failed(key, error="boom", seconds=0.1)
            else:
                journal.finished(key, outcome=Outcome.APPLIED, seconds=0.1)
            seen.append((journal.steps(), journal.events()))
        log = store.log_path.read_bytes() if store.log_path.exists() else b""
        cut = data.draw(st.integers(0, len(log)), label="cut at")
        store.log_path.write_bytes(log[:cut])
        again = Journal(FileStore(Path(tmp), "m"), move="m")
        assert (again.steps(), again.events()) in seen
        # The next command writes on: nothing lands after the cut line and is lost.
        again.started("after the crash")
        again.started("and on", durable=False)
        last = Journal(FileStore(Path(tmp), "m"), move="m")
        assert last.steps() == again.steps() and last.events() == again.events()


def test_a_move_of_many_databases_writes_each_record_about_twice_not_the_document_each_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    written = {"bytes": 0, "whole": 0}
    real_write, real_append = FileStore.write, FileStore.append

    def write(self: FileStore, text: str, *, sync: bool = True) -> None:
        written["bytes"] += len(text)
        written["whole"] += 1
        real_write(self, text, sync=sync)

    def append(self: FileStore, line: str, *, sync: bool) -> None:
        written["bytes"] += len(line)
        real_append(self, line, sync=sync)

    monkeypatch.setattr(FileStore, "write", write)
    monkeypatch.setattr(FileStore, "append", append)
    store = FileStore(tmp_path, "m")
    journal = Journal(store, move="m")
    for i in range(3_000):
        journal.started(f"tenant_{i}/start.copy_data", scope=f"tenant_{i}", durable=False)
        journal.finished(
            f"tenant_{i}/start.copy_data", outcome=Outcome.APPLIED, seconds=1, durable=False
        )
    journal.close()
    document = store.path.stat().st_size  # 1.7 MB
    # The log holds every version of a record (running, then done), the document the last;
    # folded in each time it outgrows the document, the bytes written stay a few times the
    # document's (6.5 MB in 6 whole writes, measured). Written whole at each write, the
    # 3,000 writes were 2.6 GB.
    assert written["bytes"] < 5 * document, (written, document)
    assert written["whole"] <= 8, written


def test_no_secret_reaches_the_ledger(tmp_path: Path) -> None:
    register_secret("s3cr3t-value-xyz")
    journal = Journal(FileStore(tmp_path, "m"), move="m")
    journal.started("k")
    journal.failed("k", error="auth failed for password=s3cr3t-value-xyz", seconds=0.1)
    journal.note("connect", detail="postgresql://app:s3cr3t-value-xyz@db/app")
    text = (tmp_path / "m.ledger.jsonl").read_text()
    journal.close()
    text += (tmp_path / "m.ledger.json").read_text()
    assert "s3cr3t-value-xyz" not in text
    assert "********" in text


def test_a_second_runner_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    store = FileStore(tmp_path, "m")
    with store.lock(), pytest.raises(LedgerLocked) as caught, FileStore(tmp_path, "m").lock():
        pass
    assert f"pid {os.getpid()}" in caught.value.message
    with store.lock():  # released on exit
        pass


def test_a_killed_holder_does_not_leave_a_stale_lock(tmp_path: Path) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from cutover.ledger import FileStore\n"
            f"with FileStore(Path({str(tmp_path)!r}), 'm').lock():\n"
            "    print('held', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with pytest.raises(LedgerLocked), FileStore(tmp_path, "m").lock():
        pass
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    deadline = time.monotonic() + 5
    while True:
        try:
            with FileStore(tmp_path, "m").lock():
                break
        except LedgerLocked:
            assert time.monotonic() < deadline
            time.sleep(0.05)
