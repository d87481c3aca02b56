"""Streamed instances (connectors.dicom.intake.InstanceStream): the receiving thread only
queues what arrives; an intake worker feeds the sink's writer, checks and commits. What
came out is checked: the bytes the sink got, the thread that wrote them, how much the
receiver could queue ahead of a stalled sink, and what a failing sink leaves behind."""
from __future__ import annotations

import hashlib
import sys
import threading
from pathlib import Path

from pydicom.data import get_testdata_file

from connectors.dicom.intake import InstanceError, Received, Retrieval, Stored
from connectors.dicom.streaming import InstanceStream
from tests.helpers import wait_until

CT = Path(get_testdata_file("CT_small.dcm"))
MIB = 1 << 20


class RecordingSink:
    """A streaming sink that keeps what it is given, and the threads that gave it."""

    def __init__(self, *, gate: threading.Event | None = None, fail_after: int | None = None,
                 fail_open: bool = False):
        self.gate, self.fail_after, self.fail_open = gate, fail_after, fail_open
        self.writers: list[_Writer] = []

    def __call__(self, *args):  # the file path is never taken: instances stream
        raise AssertionError("a streaming sink gets no files")

    def open(self, transfer_key, meta):
        if self.fail_open:
            raise OSError("disk full")
        writer = _Writer(self)
        self.writers.append(writer)
        return writer


class _Writer:
    def __init__(self, sink: RecordingSink):
        self.sink = sink
        self.data = bytearray()
        self.threads: set[str] = {threading.current_thread().name}
        self.writes = 0
        self.state = "open"

    def write(self, data) -> None:
        if self.sink.gate is not None:
            self.sink.gate.wait(30)
        if self.sink.fail_after is not None and self.writes >= self.sink.fail_after:
            raise OSError("disk full")
        self.threads.add(threading.current_thread().name)
        self.data += data
        self.writes += 1

    def commit(self) -> Stored:
        self.threads.add(threading.current_thread().name)
        self.state = "committed"
        return Stored(f"blob-{len(self.sink.writers)}", hashlib.sha256(self.data).hexdigest(),
                      len(self.data))

    def abort(self) -> None:
        self.state = "aborted"


def _pieces(data: bytes, size: int) -> list[memoryview]:
    view = memoryview(data)
    return [view[i:i + size] for i in range(0, len(data), size)]


def _waiting_in_write(thread: threading.Thread) -> bool:
    """True while `thread` waits inside InstanceStream.write (the queue is full)."""
    frame = sys._current_frames().get(thread.ident)
    names = []
    while frame is not None:
        names.append(frame.f_code.co_name)
        frame = frame.f_back
    return len(names) > 1 and names[0] == "wait" and "write" in names[1:3]


def test_worker_writes_the_instance_with_its_preamble_zeroed(tmp_path):
    data = b"MZ polyglot" + CT.read_bytes()[11:]
    sink = RecordingSink()
    retrieval = Retrieval("t", sink, spool=tmp_path)
    stream = retrieval.stream("wado-rs")
    for piece in _pieces(data, 1000):  # the preamble spans several pieces
        stream.write(piece[:60])
        stream.write(piece[60:])
    stream.finish(True)
    assert retrieval.wait_settled(10)
    retrieval.close()
    (writer,) = sink.writers
    assert bytes(writer.data) == bytes(128) + data[128:]
    assert writer.state == "committed"
    assert all(name.startswith("dicom-intake") for name in writer.threads)
    (got,) = retrieval.received.values()
    assert isinstance(got, Received) and got.size == len(data)
    assert got.sha256 == hashlib.sha256(bytes(128) + data[128:]).hexdigest()


def test_receiver_queues_at_most_queued_bytes_ahead_of_a_stalled_sink(tmp_path):
    gate = threading.Event()
    sink = RecordingSink(gate=gate)
    retrieval = Retrieval("t", sink, spool=tmp_path)
    head = CT.read_bytes()
    data = head + bytes(12 * MIB)
    stream = retrieval.stream("wado-rs")
    sent: list[int] = []

    def receive():
        for piece in _pieces(data, MIB):
            stream.write(piece)
            sent.append(len(piece))
        stream.finish(True)

    receiver = threading.Thread(target=receive)
    receiver.start()
    try:
        wait_until(lambda: _waiting_in_write(receiver), 10, 0.01, "the receiver to wait")
        assert stream._queued >= InstanceStream.QUEUED >= sum(sent)
    finally:
        gate.set()
    receiver.join(30)
    assert retrieval.wait_settled(10)
    retrieval.close()
    assert bytes(sink.writers[0].data) == bytes(128) + data[128:]
    assert len(retrieval.received) == 1


def test_failing_sink_never_blocks_the_receiver(tmp_path):
    """The writer fails after its first write: the worker keeps draining what arrives
    (so the receiving thread goes on), aborts, and reports a retryable error."""
    sink = RecordingSink(fail_after=1)
    retrieval = Retrieval("t", sink, spool=tmp_path)
    stream = retrieval.stream("c-get", "1.2.3", "1.2.840.10008.5.1.4.1.1.2")
    for piece in _pieces(CT.read_bytes() + bytes(16 * MIB), MIB):
        stream.write(piece)
    stream.finish(True)
    assert retrieval.wait_settled(10)
    retrieval.close()
    assert sink.writers[0].state == "aborted" and not retrieval.received
    (err,) = retrieval.errors.values()
    assert isinstance(err, InstanceError) and not err.permanent
    assert err.sop_instance_uid == "1.2.3" and "disk full" in err.reason


def test_sink_that_cannot_open_gives_an_instance_error(tmp_path):
    retrieval = Retrieval("t", RecordingSink(fail_open=True), spool=tmp_path)
    stream = retrieval.stream("c-move", "1.2.4", "")
    stream.write(CT.read_bytes())
    stream.finish(True)
    assert retrieval.wait_settled(10)
    retrieval.close()
    (err,) = retrieval.errors.values()
    assert err.sop_instance_uid == "1.2.4" and not err.permanent and "disk full" in err.reason


def test_cut_off_instance_is_aborted(tmp_path):
    sink = RecordingSink()
    retrieval = Retrieval("t", sink, spool=tmp_path)
    stream = retrieval.stream("c-move", "1.2.5", "")
    stream.write(CT.read_bytes()[:5000])
    stream.finish(False)
    assert retrieval.wait_settled(10)
    retrieval.close()
    assert sink.writers[0].state == "aborted" and not retrieval.received
    assert not retrieval.errors["1.2.5"].permanent


def test_no_worker_waits_for_a_sender(tmp_path):
    """One intake worker, two instances received at once (two associations): the one
    still arriving does not hold the worker, the other is stored meanwhile."""
    sink = RecordingSink()
    retrieval = Retrieval("t", sink, spool=tmp_path, workers=1)
    data = CT.read_bytes() + bytes(MIB)
    slow = retrieval.stream("c-move", "", "")
    slow.write(data[:InstanceStream.BATCH + 1000])  # a worker writes this much, leaves
    fast = retrieval.stream("c-move", "", "")
    for piece in _pieces(data, 16384):
        fast.write(piece)
    fast.finish(True)
    wait_until(lambda: len(retrieval.received) == 1, 10, 0.01, "the fast instance")
    assert slow.complete is None and [w.state for w in sink.writers] == ["open", "committed"]
    slow.write(data[InstanceStream.BATCH + 1000:])
    slow.finish(True)
    assert retrieval.wait_settled(10)
    retrieval.close()
    assert [w.state for w in sink.writers] == ["committed", "committed"]
    assert all(bytes(w.data) == bytes(128) + data[128:] for w in sink.writers)
