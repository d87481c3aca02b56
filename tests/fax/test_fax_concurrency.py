"""Several faxes analyzed at once, each taken once; a pull waits for the drop folder's
backlog, so one transfer carries every fax that was already there."""
from __future__ import annotations

import shutil
import threading
from collections import Counter

import pytest

from connectors.base import RecordQuery, SourceUnavailable
from connectors.fax import connector as fax_connector
from connectors.fax.store import StoreBusy, read_json

from .test_fax_drop import FINAL, Env, wait_for


def _drop_copies(env, sample, n: int) -> list[str]:
    names = [f"fax-{i:02d}.pdf" for i in range(n)]
    for name in names:
        shutil.copy(sample.path, env.drop / name)
    return names


def _store_rows(env) -> Counter:
    """source name -> how many store folders hold it, over every state."""
    rows = Counter()
    for state in (*FINAL, "claimed", "tmp"):
        for fax_id in env.store.ids(state):
            rows[read_json(env.store.path(state, fax_id) / "meta.json")["source_name"]] += 1
    return rows


def test_faxes_dropped_at_once_are_analyzed_together_and_each_taken_once(tmp_path, descriptors, samples,
                                                                         monkeypatch):
    env = Env(tmp_path, descriptors)
    env.ingestor.workers = 3
    # the first two analyses wait for each other: with one at a time this barrier breaks
    # and both faxes end in quarantine (internal-error), which the assertions below catch
    barrier = threading.Barrier(2, timeout=60)
    analyze, calls, lock = fax_connector.analyze, [], threading.Lock()

    def meeting(*args, **kwargs):
        with lock:
            calls.append(threading.current_thread().name)
            first_two = len(calls) <= 2
        if first_two:
            barrier.wait()
        return analyze(*args, **kwargs)
    monkeypatch.setattr(fax_connector, "analyze", meeting)
    results = []
    env.ingestor.on_result = results.append
    names = _drop_copies(env, samples["text_layer"], 6)
    outcomes = env.ingest_all()

    tid = samples["text_layer"].transfer_id
    assert sorted(env.by_source()) == names
    assert {state for state, _ in env.by_source().values()} == {"matched"}
    assert _store_rows(env) == Counter({name: 1 for name in names})  # each file claimed once
    assert sorted(o.fax_id for o in outcomes) == sorted(o.fax_id for o in results) == sorted(
        env.store.ids("matched"))
    assert {(o.state, o.transfer_id) for o in outcomes} == {("matched", tid)}
    assert len(calls) == 6 and len(set(calls[:2])) == 2  # analyzed by different workers
    assert not env.store.ids("quarantine") and not env.store.ids("claimed")


def test_two_ingestors_on_one_store_take_each_fax_once(tmp_path, descriptors, samples):
    """Two ingestors (as in two processes: each opens the lock file itself) race over one
    drop folder: the store's lock lets one work at a time and no file is taken twice."""
    first = Env(tmp_path, descriptors)
    second = Env(tmp_path, descriptors)
    first.ingestor.workers = second.ingestor.workers = 2
    names = _drop_copies(first, samples["text_layer"], 5)
    busy = Counter()
    stop = threading.Event()

    def loop(env):
        while not stop.is_set():
            try:
                env.ingestor.scan_once()
            except StoreBusy:
                busy[id(env)] += 1
    threads = [threading.Thread(target=loop, args=(e,)) for e in (first, second)]
    for t in threads:
        t.start()
    try:
        wait_for(lambda: len(first.store.ids("matched")) == 5, timeout=120)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert _store_rows(first) == Counter({name: 1 for name in names})
    assert busy  # they did meet at the lock


def test_a_pull_waits_for_the_backlog_and_then_carries_every_fax(tmp_path, descriptors, samples):
    env = Env(tmp_path, descriptors)
    tid = samples["text_layer"].transfer_id
    _drop_copies(env, samples["text_layer"], 3)
    # claim all three, analyze one: two are still waiting in claimed/
    wait_for(lambda: (env.ingestor._claim_complete(), len(env.store.ids("claimed")) == 3)[1])
    first_id = env.store.ids("claimed")[0]
    assert env.ingestor._process(first_id, descriptors).state == "matched"
    got = []
    with env.connector() as c:  # settle_seconds 0: only the backlog makes it wait
        with pytest.raises(SourceUnavailable, match="2 received file"):
            got.extend(c.fetch(RecordQuery("auth-1", tid)))
    assert [r.metadata["fax_id"] for r in got] == [first_id]  # what came is taken at once

    env.ingestor.scan_once()  # analyzes the claimed two
    assert len(env.store.ids("matched")) == 3
    shutil.copy(samples["text_layer"].path, env.drop / "late.pdf")  # not yet claimed
    with env.connector() as c:
        with pytest.raises(SourceUnavailable, match="1 received file"):
            got.extend(c.fetch(RecordQuery("auth-1", tid, already_fetched=frozenset({got[0].origin}))))
    env.ingest_all()
    with env.connector() as c:  # backlog drained: it ends, with every fax
        got.extend(c.fetch(RecordQuery("auth-1", tid, already_fetched=frozenset(r.origin for r in got))))
    ids = [r.metadata["fax_id"] for r in got]
    assert len(ids) == len(set(ids)) == 4
    assert set(ids) == {*env.store.ids("matched"), *env.store.ids("done")}


def test_a_stuck_file_stops_counting_after_backlog_wait(tmp_path, descriptors, samples):
    env = Env(tmp_path, descriptors)
    tid = samples["text_layer"].transfer_id
    shutil.copy(samples["text_layer"].path, env.drop / "a.pdf")
    env.ingest_all()
    (env.drop / "stuck.pdf").write_bytes(b"%PDF-1.4 never finished")
    (env.drop / ".temp.part").write_bytes(b"hidden: a file being written")
    (env.drop / "a-sidecar.json").write_bytes(b"{}")
    assert env.store.backlog(env.drop, 600) == 1  # hidden files and sidecars are no backlog
    with env.connector() as c:
        c.options["backlog_wait_seconds"] = 0  # unchanged that long: no longer waited for
        (record,) = c.fetch(RecordQuery("auth-1", tid))
    assert record.metadata["match"] == "text"
