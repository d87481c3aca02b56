"""The resume journal: a small JSON-lines file in the connector's workdir.

File name: `fhir-pull-<key>.jsonl`, where <key> is a hash of everything that shapes the
pull (base URL, patient query, data classes, dates, since, retrieval mode), so a
different query never resumes from it. One JSON object per line, appended after the
work it describes is on disk:

    {"ev": "patient", "id": "123"}
    {"ev": "page", "stream": "Observation", "page": 0, "url": "...", "next": "...",
     "records": [{"origin": ..., "file": ..., "sha256": ..., "size": ..., ...}],
     "keys": ["Observation/1@2", ...], "refs": ["Practitioner/9", ...]}
    {"ev": "attachment", "record": {...}}
    {"ev": "stream-done", "stream": "Observation"}    (+ "refused": why, for a refused search)
    {"ev": "everything-refused", "reason": "..."}     ($everything refused: per-type searches)
    {"ev": "unresolved", "ref": "Device/7", "reason": "..."}   (a reference left unresolved)
    {"ev": "done"}

On resume the connector replays it: a stream restarts from the `next` of its last
page, resources already seen are not yielded again, and records written but not
acknowledged by the gateway (their origin is not in `query.already_fetched`) are
yielded again from their files. A torn last line (a crash mid-write) is ignored.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import orjson


def journal_key(*parts) -> str:
    return hashlib.sha256(orjson.dumps([str(p) for p in parts])).hexdigest()[:20]


@dataclass
class StreamState:
    pages: int = 0
    next_url: str | None = None
    started: bool = False
    done: bool = False
    stop: str | None = None  # why paging stopped (a refused next link)


@dataclass
class PullState:
    patient_id: str | None = None
    streams: dict[str, StreamState] = field(default_factory=dict)
    seen: dict[str, str] = field(default_factory=dict)  # "Type/id" -> version marker
    refs: set[str] = field(default_factory=set)  # references ("Type/id", or as written when unreadable)
    unresolved: dict[str, str] = field(default_factory=dict)  # reference -> why it stays so
    reads: int = 0  # resources read by reference so far (bounded)
    records: dict[str, dict] = field(default_factory=dict)  # origin -> record, in order
    pull_started: str | None = None
    everything_refused: str | None = None  # the server refused $everything: searches instead
    attachments: dict[str, dict] = field(default_factory=dict)  # absolute URL -> record
    done: bool = False

    def stream(self, key: str) -> StreamState:
        return self.streams.setdefault(key, StreamState())


class PullJournal:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.state = PullState()
        if self.path.exists():
            self._replay()

    def _replay(self) -> None:
        with open(self.path, "rb") as fh:
            for line in fh:
                try:
                    ev = orjson.loads(line)
                except orjson.JSONDecodeError:
                    break  # torn last line
                self._apply(ev)

    def _apply(self, ev: dict) -> None:
        st = self.state
        kind = ev.get("ev")
        if kind == "patient":
            st.patient_id = ev["id"]
            st.pull_started = ev.get("pull_started")
        elif kind == "page":
            s = st.stream(ev["stream"])
            s.started = True
            s.pages = ev["page"] + 1
            s.next_url = ev.get("next")
            s.stop = ev.get("stop")
            for k in ev.get("keys", ()):
                rkey, _, version = k.partition("@")
                st.seen[rkey] = version
            st.refs.update(ev.get("refs", ()))
            st.reads += ev.get("reads", 0)
            for rec in ev.get("records", ()):
                st.records[rec["origin"]] = rec
        elif kind == "attachment":
            rec = ev["record"]
            st.attachments[rec["metadata"]["absolute_url"]] = rec
            st.records[rec["origin"]] = rec
        elif kind == "attachment-refused":
            st.attachments[ev["url"]] = {"refused": ev["reason"]}
        elif kind == "unresolved":
            st.unresolved[ev["ref"]] = ev["reason"]
        elif kind == "everything-refused":
            st.everything_refused = ev["reason"]
        elif kind == "stream-done":
            st.stream(ev["stream"]).done = True
        elif kind == "done":
            st.done = True

    def append(self, ev: dict) -> None:
        self._apply(ev)
        # written through, not fsynced (2-3 ms a page here): a killed worker loses nothing,
        # the page cache survives it; after a power cut a lost tail only means pages are
        # fetched again, which de-duplication and `already_fetched` absorb
        with open(self.path, "ab") as fh:
            fh.write(orjson.dumps(ev) + b"\n")
