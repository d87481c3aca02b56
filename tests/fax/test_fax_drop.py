"""The drop folder end to end: every fax claimed once, matched or queued, none lost."""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from connectors import connector_class
from connectors.base import RecordQuery, SourceUnavailable, hash_file
from connectors.fax.connector import FaxIngestor
from connectors.fax.review import PageNotFound, ReviewError
from connectors.fax.store import FaxStore, read_json

from . import faxgen
from .faxgen import KEY, cover_pdf

FINAL = ("matched", "review", "quarantine", "rejected", "done")


def wait_for(predicate, timeout=30.0, interval=0.02):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError("condition not reached in time")


class Env:
    def __init__(self, root: Path, descriptors, drop: Path | None = None):
        self.drop = drop or root / "drop"
        self.drop.mkdir(exist_ok=True)
        self.store_root = root / "store"
        self.workdir = root / "fetched"
        self.descriptors = descriptors
        self.store = FaxStore(self.store_root)
        self.ingestor = FaxIngestor(self.drop, self.store, KEY, lambda: self.descriptors,
                                    settle_seconds=0.05, empty_settle_seconds=0.05,
                                    orphan_sidecar_seconds=0.05)

    def connector(self):
        keyfile = self.store_root.parent / "cover.key"
        keyfile.write_bytes(KEY)
        return connector_class("fax-drop")("fax", {"drop": str(self.drop), "store": str(self.store_root),
                                                   "cover_key_file": str(keyfile), "settle_seconds": 0},
                                             self.workdir)

    def ingest_all(self):
        """Scan until the drop folder is empty and nothing waits in claimed/."""
        outcomes = []

        def settled():
            outcomes.extend(self.ingestor.scan_once())
            pending = [n for n in os.listdir(self.drop) if not n.startswith(".")]
            return not pending and not self.store.ids("claimed")
        wait_for(settled)
        return outcomes

    def by_source(self):
        """source name -> (state, fax id) for every fax in the store."""
        found = {}
        for state in FINAL:
            for fax_id in self.store.ids(state):
                meta = read_json(self.store.path(state, fax_id) / "meta.json")
                found[meta["source_name"]] = (state, fax_id)
        return found

    def fetch(self, transfer_id, already=frozenset()):
        """The records one pull yields (a pull that must wait for more faxes ends with
        SourceUnavailable after them: see test_pull_waits_for_faxes)."""
        out = []
        with self.connector() as c:
            try:
                out.extend(c.fetch(RecordQuery("auth-1", transfer_id, already_fetched=frozenset(already))))
            except SourceUnavailable:
                pass
        return out


@pytest.fixture
def env(tmp_path, descriptors):
    return Env(tmp_path, descriptors)


def test_every_sample_lands_where_expected(env, samples):
    env.ingestor.workers = 2
    for sample in samples.values():
        shutil.copy(sample.path, env.drop / f"{sample.name}{sample.path.suffix}")
    env.ingest_all()
    placed = env.by_source()
    assert os.listdir(env.drop) == []
    assert len(placed) == len(samples)
    for sample in samples.values():
        state, fax_id = placed[f"{sample.name}{sample.path.suffix}"]
        result = read_json(env.store.path(state, fax_id) / "result.json")
        assert (state, result["transfer_id"], result["match"]) == (
            "matched" if sample.transfer_id else "review", sample.transfer_id, sample.method), sample.name
        assert result["pages"] == sample.pages, sample.name
        assert hash_file(env.store.path(state, fax_id) / "original")[0] == hash_file(sample.path)[0]
        # review thumbnails only where someone will review: every received page of those
        previews = sorted(p.name for p in env.store.path(state, fax_id).glob("preview-*.png"))
        assert previews == ([] if state == "matched" else
                            [f"preview-{n}.png" for n in range(1, result["received_pages"] + 1)]), sample.name

    records = env.fetch(samples["qr_fine_g4"].transfer_id)
    assert len(records) == 1
    record = records[0]
    assert record.kind == "fax" and record.media_type == "application/pdf"
    assert (record.sha256, record.size) == hash_file(record.path)
    assert record.metadata["match"] == "qr" and record.metadata["cover_pages_removed"] == [0]
    assert record.metadata["fax_number"] == "+1 555 123 4567"
    assert record.metadata["original_media_type"] == "image/tiff" and record.metadata["pages"] == 2
    from pypdf import PdfReader
    assert len(PdfReader(record.path).pages) == 2

    qr_pdf = env.fetch(samples["qr_pdf"].transfer_id)  # qr_standard_g3 and qr_pdf: same transfer
    assert sorted(r.metadata["original_media_type"] for r in qr_pdf) == ["application/pdf", "image/tiff"]
    ocr = env.fetch(samples["ocr"].transfer_id)
    assert [r.metadata["match"] for r in ocr] == ["text"]

    review = env.connector().review_queue().list()
    assert len(review) == 3
    reasons = " ".join(" ".join(item.reasons) for item in review)
    assert "HMAC" in reasons and "not open" in reasons


def test_fetched_faxes_are_acknowledged_once(env, samples):
    shutil.copy(samples["text_layer"].path, env.drop / "letter.pdf")
    env.ingest_all()
    tid = samples["text_layer"].transfer_id
    first = env.fetch(tid)
    again = env.fetch(tid)
    assert [r.origin for r in first] == [r.origin for r in again] and len(first) == 1
    assert env.fetch(tid, {first[0].origin}) == []
    assert env.store.ids("done") == [first[0].metadata["fax_id"]]
    assert env.fetch("tr-other") == []
    shutil.copy(samples["text_layer"].path, env.drop / "again.pdf")
    env.ingest_all()
    (second,) = env.fetch(tid)
    with env.connector() as c:
        assert c.acknowledge([second.origin, "fax:../../etc", "fax:unknown"]) == 1
    assert env.fetch(tid) == [] and len(env.store.ids("done")) == 2


def test_pull_waits_for_faxes(env, samples):
    tid = samples["text_layer"].transfer_id
    query = RecordQuery("auth-1", tid)
    with env.connector() as c:
        with pytest.raises(SourceUnavailable, match="no fax has arrived"):
            list(c.fetch(query))
    shutil.copy(samples["text_layer"].path, env.drop / "letter.pdf")
    env.ingest_all()
    with env.connector() as c:
        c.options["settle_seconds"] = 3600  # more pages may follow within the hour
        got = []
        with pytest.raises(SourceUnavailable, match="waiting"):
            for record in c.fetch(query):
                got.append(record)
        assert len(got) == 1  # what came is taken at once
        c.options["settle_seconds"] = 0
        done = list(c.fetch(RecordQuery("auth-1", tid, already_fetched=frozenset({got[0].origin}))))
        assert done == []  # nothing new, and it had some: the pull is complete


@pytest.mark.parametrize("kind", ["pdf", "tiff"])
def test_review_has_a_preview_of_every_page(env, tmp_path, kind):
    pdf = faxgen.records_pdf(None, 3, seed=7)
    if kind == "pdf":
        (env.drop / "three.pdf").write_bytes(pdf)
    else:
        faxgen.save_tiff([faxgen.faxify(p) for p in faxgen.render(pdf)], env.drop / "three.tif")
    env.ingest_all()
    queue = env.connector().review_queue()
    [fax_id] = [item.fax_id for item in queue.list()]
    assert queue.previews(fax_id) == 3
    for n in (1, 2, 3, "3"):
        with Image.open(queue.preview(fax_id, n)) as image:
            image.load()
            assert image.mode == "L" and image.width <= 850 and image.height <= 1100
            assert image.height > 500 and image.getextrema() == (0, 255)  # a page, with ink
    for bad in (4, 0, -1, "x", "1.0", "", "²", "../preview-1"):
        with pytest.raises(PageNotFound, match="pages 1 to 3"):
            queue.preview(fax_id, bad)



def test_a_fax_reviewed_before_every_page_had_a_preview_keeps_its_first(env):
    (env.drop / "one.pdf").write_bytes(faxgen.records_pdf(None, 2, seed=11))
    env.ingest_all()
    queue = env.connector().review_queue()
    [fax_id] = [item.fax_id for item in queue.list()]
    folder = queue.preview(fax_id, 1).parent
    first = (folder / "preview-1.png").read_bytes()
    (folder / "preview-1.png").rename(folder / "preview.png")  # the earlier layout: page 1 only
    (folder / "preview-2.png").unlink()
    assert queue.previews(fax_id) == 1
    assert queue.preview(fax_id, 1).read_bytes() == first
    with pytest.raises(PageNotFound, match="pages 1 to 1"):
        queue.preview(fax_id, 2)

def test_review_assign_and_reject(env, samples, people):
    shutil.copy(samples["unknown"].path, env.drop / "u1.pdf")
    (env.drop / "u2.pdf").write_bytes(faxgen.records_pdf(None, 1, seed=99))
    env.ingest_all()
    queue = env.connector().review_queue()
    first, second = [item.fax_id for item in queue.list()]
    assert queue.preview(first).read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ReviewError):
        queue.assign(first, "../../etc")
    queue.assign(first, people[4].transfer_id, by="operator-1")
    queue.reject(second, "wrong recipient", by="operator-1")
    with pytest.raises(ReviewError):
        queue.assign(second, people[4].transfer_id)
    with pytest.raises(ReviewError):
        queue.get("not-an-id")
    records = env.fetch(people[4].transfer_id)
    assert [r.metadata["match"] for r in records] == ["review"]
    assert records[0].metadata["fax_id"] == first
    assert env.store.ids("rejected") == [second] and queue.list() == []


def test_sidecar_routes_a_fax_without_text(env, people, tmp_path):
    page = faxgen.render(faxgen.records_pdf(None, 1, mention=False), 200)[0]
    faxgen.scanned_pdf([faxgen.blot(page, (0, 0, 1, 1))], env.drop / "fax0042.pdf")
    (env.drop / "fax0042.json").write_text(json.dumps(
        {"request_id": people[1].request_id, "caller_id": "+44 20 7946 0000", "pages": 1}))
    env.ingest_all()
    assert os.listdir(env.drop) == []
    records = env.fetch(people[1].transfer_id)
    assert [r.metadata["match"] for r in records] == ["sidecar"]
    assert records[0].metadata["fax_number"] == "+44 20 7946 0000"


def test_hostile_names_and_files_are_quarantined_without_blocking_others(env, samples, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not for the fax store")
    good = samples["text_layer"].path.read_bytes()
    drop = os.fsencode(env.drop)
    for raw in (b"..evil.pdf", b"line\nbreak.pdf", b"caf\xe9-latin1.pdf", b"tab\there.pdf"):
        with open(os.path.join(drop, raw), "wb") as fh:
            fh.write(good)
    os.symlink(secret, env.drop / "link.pdf")
    os.mkfifo(env.drop / "pipe.pdf")
    (env.drop / "empty.pdf").write_bytes(b"")
    (env.drop / "ok.pdf").write_bytes(good)
    (env.drop / ".incoming.part").write_bytes(b"%PDF- still being written")
    env.ingest_all()
    placed = env.by_source()
    assert placed["ok.pdf"][0] == "matched"
    quarantined = {item.source_name: item.reason for item in env.connector().review_queue().quarantined()}
    assert quarantined == {"..evil.pdf": "hostile-name", "line\\x0abreak.pdf": "hostile-name",
                           "caf\\xe9-latin1.pdf": "hostile-name", "tab\\x09here.pdf": "hostile-name",
                           "link.pdf": "not-a-file", "pipe.pdf": "not-a-file", "empty.pdf": "empty"}
    assert os.listdir(env.drop) == [".incoming.part"]  # temporary names are left alone
    assert secret.read_text() == "not for the fax store"
    for fax_id in env.store.ids("quarantine"):
        assert (env.store.path("quarantine", fax_id) / "reason.txt").read_text().strip()


def test_a_file_still_being_written_is_not_taken(tmp_path, descriptors, samples):
    env = Env(tmp_path, descriptors)
    env.ingestor.settle_seconds = 60.0
    data = samples["text_layer"].path.read_bytes()
    with open(env.drop / "growing.pdf", "wb") as fh:
        fh.write(data[:1000])
        fh.flush()
        assert env.ingestor.scan_once() == []
        fh.write(data[1000:])
    assert env.ingestor.scan_once() == []  # changed since last look: not stable yet
    assert os.listdir(env.drop) == ["growing.pdf"]
    env.ingestor.settle_seconds = 0.05
    env.ingest_all()
    assert env.by_source()["growing.pdf"][0] == "matched"


@pytest.mark.parametrize("stop_after", [1, 2])
def test_crash_during_claim_on_the_same_file_system(env, samples, stop_after):
    """Crash after writing meta.json (1 step) or after the rename (2 steps)."""
    shutil.copy(samples["text_layer"].path, env.drop / "a.pdf")
    steps = env.store.claim_steps(env.drop, b"a.pdf", {"hostile": None})
    for _ in range(stop_after):
        next(steps)
    steps.close()  # the process dies here: nothing after this step ran
    env.ingest_all()
    placed = env.by_source()
    assert list(placed) == ["a.pdf"] and placed["a.pdf"][0] == "matched"
    assert sum(len(env.store.ids(s)) for s in FINAL) == 1 and env.store.ids("tmp") == []


@pytest.mark.parametrize("stop_after", [1, 2, 3, 4])
def test_crash_during_claim_across_file_systems(tmp_path, descriptors, samples, stop_after):
    """The drop folder on another file system (tmpfs): copy, fsync, rename, unlink; a
    crash after any of those steps still gives exactly one fax and an empty drop folder."""
    if not os.path.isdir("/dev/shm") or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs /dev/shm on a file system of its own")
    import tempfile

    drop = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="faxdrop-"))
    try:
        env = Env(tmp_path, descriptors, drop=drop)
        shutil.copy(samples["text_layer"].path, drop / "a.pdf")
        steps = env.store.claim_steps(drop, b"a.pdf", {"hostile": None})
        for _ in range(stop_after):
            next(steps)
        steps.close()
        env.ingest_all()
        assert os.listdir(drop) == []
        placed = env.by_source()
        assert list(placed) == ["a.pdf"] and placed["a.pdf"][0] == "matched"
        assert hash_file(env.store.path("matched", placed["a.pdf"][1]) / "original") == hash_file(
            samples["text_layer"].path)
    finally:
        shutil.rmtree(drop, ignore_errors=True)


def test_crash_between_decision_and_move(env, samples, people):
    shutil.copy(samples["unknown"].path, env.drop / "u.pdf")
    env.ingest_all()
    (fax_id,) = env.store.ids("review")
    folder = env.store.path("review", fax_id)
    result = read_json(folder / "result.json")
    result.update(decision="assigned", transfer_id=people[0].transfer_id, match="review")
    (folder / "result.json").write_text(json.dumps(result))  # as if killed before the rename
    env.ingest_all()  # recovery finishes the move
    assert env.store.ids("matched") == [fax_id]
    assert [r.metadata["fax_id"] for r in env.fetch(people[0].transfer_id)] == [fax_id]


def test_killed_ingestor_loses_and_duplicates_nothing(tmp_path, descriptors, people):
    """SIGKILL a real ingestor process at random moments while it works through 12
    faxes; restart it each time. In the end each fax is in exactly one final state."""
    drop, store = tmp_path / "drop", tmp_path / "store"
    drop.mkdir()
    transfers = tmp_path / "transfers.json"
    transfers.write_text(json.dumps([{"transfer_id": d.transfer_id, "patient_name": d.patient_name,
                                      "birth_date": d.birth_date.isoformat(), "request_id": d.request_id}
                                     for d in descriptors]))
    hashes = set()
    for n in range(12):
        data = faxgen.records_pdf(people[n % 5], 1, seed=100 + n)
        (drop / f"fax{n:02d}.pdf").write_bytes(data)
        hashes.add(hash_file(drop / f"fax{n:02d}.pdf")[0])
    rng = random.Random(5)
    runner = Path(__file__).parent / "ingest_runner.py"
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2]))

    def finished():
        s = FaxStore(store) if store.exists() else None
        return s is not None and not os.listdir(drop) and not s.ids("claimed") and not s.ids("tmp")

    kills = 0
    while True:
        proc = subprocess.Popen([sys.executable, str(runner), str(drop), str(store), str(transfers)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            assert proc.stdout.readline().strip() == b"ready"
            if kills < 4:
                time.sleep(rng.uniform(0.05, 1.5))  # a random moment to crash, not a readiness wait
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                continue
            wait_for(finished, timeout=120, interval=0.05)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait()
        break
    s = FaxStore(store)
    seen = []
    for state in FINAL:
        for fax_id in s.ids(state):
            seen.append(hash_file(s.path(state, fax_id) / "original")[0])
    assert sorted(seen) == sorted(hashes)  # all 12, each exactly once
    assert s.ids("matched") and not s.ids("quarantine")


@pytest.mark.parametrize("use_inotify", [True, False])
def test_watcher_picks_up_a_drop(env, samples, use_inotify):
    seen = []
    env.ingestor.on_result = seen.append
    stop = threading.Event()
    poll = 30.0 if use_inotify else 0.05  # with inotify only an event can wake it in time
    thread = threading.Thread(target=env.ingestor.run, args=(stop, poll, use_inotify), daemon=True)
    thread.start()
    try:
        time.sleep(0.05)
        shutil.copy(samples["text_layer"].path, env.drop / ".tmp-writing")
        os.rename(env.drop / ".tmp-writing", env.drop / "arrived.pdf")
        outcome = wait_for(lambda: [o for o in seen if o.state == "matched"], timeout=20)
        assert outcome[0].transfer_id == samples["text_layer"].transfer_id
    finally:
        stop.set()
        thread.join(timeout=60)
    assert not thread.is_alive()


def test_cover_sheet_alone_and_orphan_sidecar_go_aside(env, people):
    page = faxgen.render(cover_pdf(people[2]), 204)[0]
    faxgen.save_tiff([faxgen.faxify(page, seed=3)], env.drop / "only-cover.tif")
    (env.drop / "lonely.json").write_text(json.dumps({"request_id": people[2].request_id}))
    env.ingest_all()
    placed = env.by_source()
    state, fax_id = placed["only-cover.tif"]
    assert state == "review"
    item = env.connector().review_queue().get(fax_id)
    assert "the fax holds only the cover sheet" in item.reasons and item.candidates == (people[2].transfer_id,)
    assert placed["lonely.json"][0] == "quarantine"
    assert read_json(env.store.path("quarantine", placed["lonely.json"][1]) / "result.json")["reason"] == \
        "orphan-sidecar"


def test_one_ingestor_per_store(env):
    from connectors.fax.store import StoreBusy

    with env.store.locked():
        with pytest.raises(StoreBusy):
            env.ingestor.scan_once()


def test_unavailable_transfer_list_leaves_faxes_claimed(tmp_path, samples, descriptors):
    env = Env(tmp_path, descriptors)
    calls = []

    def flaky():
        calls.append(1)
        if len(calls) == 1:
            raise ConnectionError("database is down")
        return descriptors
    env.ingestor.open_transfers = flaky
    shutil.copy(samples["text_layer"].path, env.drop / "a.pdf")
    with pytest.raises(ConnectionError):
        wait_for(lambda: env.ingestor.scan_once())
    assert len(env.store.ids("claimed")) == 1 and not env.store.ids("quarantine")
    env.ingest_all()
    assert env.by_source()["a.pdf"][0] == "matched"


def test_short_cover_key_fails_at_start(tmp_path, descriptors):
    from connectors.fax.cover import CoverError

    with pytest.raises(CoverError):
        FaxIngestor(tmp_path, FaxStore(tmp_path / "s"), b"short", lambda: descriptors)


def test_a_file_held_open_by_its_writer_is_not_taken(env, samples):
    """A fax server pausing between pages: the file is stable but still open for writing."""
    target = env.drop / "receiving.pdf"
    writer = subprocess.Popen(
        [sys.executable, "-c", "import sys; f = open(sys.argv[1], 'wb'); f.write(sys.stdin.buffer.read(4000)); "
                               "f.flush(); print('written', flush=True); sys.stdin.buffer.read(); f.close()",
         str(target)], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        writer.stdin.write(samples["text_layer"].path.read_bytes().ljust(4000, b"\n")[:4000])
        writer.stdin.flush()
        assert writer.stdout.readline().strip() == b"written"
        for _ in range(5):  # stable for longer than the settle time, still not taken
            env.ingestor.scan_once()
            time.sleep(0.06)
        assert os.listdir(env.drop) == ["receiving.pdf"] and not env.store.ids("claimed")
    finally:
        writer.stdin.close()
        writer.wait(timeout=30)
    env.ingest_all()
    assert list(env.by_source()) == ["receiving.pdf"]


def test_check_names_what_is_wrong(tmp_path):
    from connectors.base import ConnectorError, SourceUnavailable

    with pytest.raises(ConnectorError, match="'store' is required"):
        connector_class("fax-drop")("fax", {"drop": str(tmp_path)}, tmp_path / "w")
    conn = connector_class("fax-drop")("fax", {"drop": str(tmp_path / "missing"), "store": str(tmp_path / "s")},
                                       tmp_path / "w")
    with pytest.raises(SourceUnavailable, match="drop folder"):
        conn.check()
    with pytest.raises(ConnectorError, match="cover_key_file"):
        conn.ingestor(lambda: [])


def test_cover_sheet_sent_last_is_found_and_removed(env, people):
    person = people[3]
    pages = faxgen.render(faxgen.records_pdf(None, 3, seed=8), 204) + faxgen.render(cover_pdf(person), 204)
    faxgen.save_tiff([faxgen.faxify(p, fine=False, skew=1.0, noise=0.01, seed=i) for i, p in enumerate(pages)],
                     env.drop / "reversed.tif", fine=False, compression="group3")
    env.ingest_all()
    (record,) = env.fetch(person.transfer_id)
    assert record.metadata["match"] == "qr" and record.metadata["cover_pages_removed"] == [3]
    assert record.metadata["pages"] == 3


def test_a_sidecar_that_is_a_fifo_or_a_link_is_ignored_without_waiting(tmp_path):
    """A sidecar is opened once, never through a link and never waiting on a FIFO (one
    named like a sidecar used to block fax intake for good), and read from that fd."""
    from connectors.fax.connector import read_sidecar

    real = tmp_path / "real.json"
    real.write_text(json.dumps({"fax_number": "+1 555 0100", "transfer": "t-1"}))
    assert read_sidecar(real) != {}
    fifo, link = tmp_path / "fax-1.json", tmp_path / "fax-2.json"
    os.mkfifo(fifo)
    link.symlink_to(real)
    for path in (fifo, link):
        result = {}
        reader = threading.Thread(target=lambda p=path: result.update(facts=read_sidecar(p)),
                                  daemon=True)
        reader.start()
        reader.join(5)
        assert not reader.is_alive(), f"reading {path.name} blocked"
        assert result["facts"] == {}
