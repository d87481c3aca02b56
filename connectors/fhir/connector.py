"""FHIR R4 REST connector (kind "fhir-rest"): pull everything one authorization covers for
one patient from a hospital FHIR API (US Core).

Options (the source's configuration):
    base_url         FHIR base, https (plain http only on loopback or with allow_http)
    auth             {"type": "none"} | {"type": "bearer", "token" | "token_file"}
                     | {"type": "smart-backend", "client_id", "private_key" (PEM or JWK)
                        | "private_key_file", "kid", "alg" (RS384|ES384), "scope"
                        (default "system/*.read"), "token_url" (else discovered from
                        .well-known/smart-configuration), "resource" (RFC 8707 indicator)}
    retrieval        "auto" ($everything when the CapabilityStatement offers it) |
                     "everything" | "search"
    since            ISO timestamp for an incremental pull (RecordQuery.since wins)
    page_size        _count asked of the server (default 500)
    chunk_resources, chunk_bytes   size of one "fhir-json" record (default 500, 4 MiB)
    timeout          [connect, read] seconds (default [10, 60])
    max_retries, backoff, backoff_max, max_retry_after, max_total_wait   (politeness)
    attachments      fetch attachment URLs (default true); supporting: read referenced
                     resources the pull lacks (Practitioner, Device, Medication...: those
                     the authorization's classes want, and who and where) (default true)
    max_reference_reads   at most this many such reads a pull (default 1000)
    extra_bases      other URL prefixes the server legitimately uses in links
    verify_tls       true, false or a CA bundle path; max_download bytes (default 2 GiB)

Records yielded:
    kind "fhir-json", media type application/fhir+ndjson: one line per Bundle entry
        ({"fullUrl", "resource", ...}) as served, de-duplicated, at most chunk_resources
        lines. origin "<base>/<stream>#page=N&chunk=M". metadata: base_url,
        fhir_version, patient_id (server id), stream, page, chunk, resources,
        attachments {url as in resource: binary id}, refused [{url, reason}],
        pull_started (server time of the pull's start: the next pull's `since`).
    Gap(kind="not-searchable", what=<Type>): a type the classes want that a per-type
        search cannot ask for (the server does not list it, or lists no patient search
        parameter for it). Gap(kind="unresolved", what=<reference>): a reference the pull
        left dangling that could not be read (404, 403, outside the base, another patient,
        over max_reference_reads).
    kind "fhir-attachment": an attachment's bytes. origin: its absolute URL. metadata:
        base_url, url (as in the resource), absolute_url, binary_id, owner (summary of
        the DocumentReference/DiagnosticReport), content_type.
"""
from __future__ import annotations

import email.utils
import hashlib
import logging
import queue
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import orjson

from connectors.base import (
    Connector,
    Gap,
    Progress,
    RawRecord,
    RecordQuery,
    RejectedRecord,
    SkippedRecord,
    SourceRejected,
    SourceUnavailable,
    hash_file,
)

from . import references
from .attachments import fetch_attachment
from .http import FHIR_JSON, FhirHttp, HttpRejected, OutsideBase, RetryPolicy, check_base_url
from .pages import PageBroken, PageResult, split_page, version_marker
from .patients import match_patient
from .plan import Capability, Stream, followed_types, instant, not_searchable, plan_streams
from .smart import NoAuth, make_auth
from .state import PullJournal, journal_key

log = logging.getLogger(__name__)

NDJSON = "application/fhir+ndjson"
CHUNK_RESOURCES = 500  # resources per "fhir-json" record: bounds the mapping's memory
REFUSED_SEARCH = frozenset({400, 403, 404, 405, 422, 501})  # a first page answered so: not supported


class _EverythingRefused(Exception):
    pass


def resource_uuid(base_url: str, rtype: str, rid: str) -> str:
    """The id a resource from this server gets downstream: stable across pulls."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{base_url.rstrip('/')}/{rtype}/{rid}"))


def http_from_options(o: dict, on_bytes=lambda n: None) -> FhirHttp:
    """The HTTP client for a source's options (base URL, TLS, politeness, auth): one way,
    for pulls and for subscriptions alike."""
    if not o.get("base_url"):
        raise SourceRejected("fhir-rest source needs base_url")
    base_url = check_base_url(str(o["base_url"]), bool(o.get("allow_http")))
    timeout = o.get("timeout", (10, 60))
    if isinstance(timeout, (int, float)):
        timeout = (float(timeout), float(timeout))
    retry = RetryPolicy(**{k: float(o[k]) if k != "max_retries" else int(o[k])
                           for k in ("max_retries", "backoff", "backoff_max", "max_retry_after",
                                     "max_total_wait") if k in o})
    extra = tuple(check_base_url(b, bool(o.get("allow_http"))) for b in o.get("extra_bases", ()))
    http = FhirHttp(base_url, NoAuth(), timeout=tuple(timeout), retry=retry, extra_bases=extra,
                    verify=o.get("verify_tls", True), max_download=int(o.get("max_download", 2 << 30)),
                    on_bytes=on_bytes)
    http.auth = make_auth(o.get("auth"), http)
    return http


class FhirRestConnector(Connector):
    name = "fhir-rest"
    transient_errors = (SourceUnavailable,)

    def __init__(self, source: str, options: dict, workdir: Path, progress=None):
        super().__init__(source, options, workdir, progress)
        o = options
        if not o.get("base_url"):
            raise SourceRejected("fhir-rest source needs base_url")
        self.base_url = check_base_url(str(o["base_url"]), bool(o.get("allow_http")))
        self.page_size = int(o.get("page_size", 500))
        self.chunk_resources = int(o.get("chunk_resources", CHUNK_RESOURCES))
        self.chunk_bytes = int(o.get("chunk_bytes", 4 << 20))
        self.mode = o.get("retrieval", "auto")
        self.want_attachments = bool(o.get("attachments", True))
        self.want_supporting = bool(o.get("supporting", True))
        self.max_reference_reads = int(o.get("max_reference_reads", 1000))
        self.max_binary_json = int(o.get("max_binary_json", 256 << 20))
        self.prefetch = int(o.get("prefetch", 8))  # records the helper thread may run ahead
        self.http = http_from_options(o, on_bytes=self._on_bytes)
        self.capability: Capability | None = None
        self._reported: set[str] = set()
        self.pull_started: str | None = None
        self.stats = {"pages": 0, "resources": 0, "bytes": 0, "attachments": 0, "duplicates": 0,
                      "refused": 0, "outcomes": 0}

    # -- Connector ------------------------------------------------------------------
    def check(self) -> None:
        self._capability()
        if not isinstance(self.http.auth, NoAuth):
            self.http.auth.apply({})  # gets a token: proves the credentials now

    def close(self) -> None:
        self.http.close()

    def fetch(self, query: RecordQuery) -> Iterator[RawRecord]:
        """Yield the query's records. With `prefetch` (default) the HTTP work runs in a
        helper thread a few records ahead, so the server prepares the next page while
        the caller stores (or maps) the current one; progress is still reported from
        the caller's thread."""
        if not self.prefetch:
            yield from self._fetch(query)
            return
        box: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()
        caller_progress = self.progress

        def put(item) -> bool:
            while not stop.is_set():
                try:
                    box.put(item, timeout=0.2)
                    return True
                except queue.Full:
                    continue
            return False

        def produce() -> None:
            self.progress = lambda p: put(("progress", p))
            try:
                for rec in self._fetch(query):
                    if not put(("record", rec)):
                        return
                put(("end", None))
            except BaseException as exc:  # handed to the caller's thread
                put(("error", exc))

        worker = threading.Thread(target=produce, name=f"fhir-pull-{self.source}", daemon=True)
        worker.start()
        try:
            while True:
                kind, value = box.get()
                if kind == "record":
                    yield value
                elif kind == "progress":
                    caller_progress(value)
                elif kind == "end":
                    break
                else:
                    raise value
        finally:
            stop.set()
            self.progress = caller_progress
            worker.join(timeout=self.http.timeout[1] + 5)

    def _fetch(self, query: RecordQuery) -> Iterator[RawRecord]:
        cap = self._capability()
        since = instant(getattr(query, "since", None) or self.options.get("since"))
        key = journal_key(self.base_url, query.identifiers, query.family_name, query.given_names,
                          query.birth_date, sorted(query.data_classes), query.date_from, query.date_to,
                          since, self.mode)
        self.workdir.mkdir(parents=True, exist_ok=True)
        journal = PullJournal(self.workdir / f"fhir-pull-{key}.jsonl")
        st = journal.state
        self._prefix = key[:10]
        self._key = key
        done_origins = query.already_fetched

        # records written before a crash but never acknowledged: hand them out again
        lost_pages: set[tuple[str, int]] = set()
        for rec in list(st.records.values()):
            if rec["origin"] in done_origins:
                continue
            raw = self._from_journal(rec)
            if raw is not None:
                yield raw
            elif rec["kind"] == "fhir-json":
                lost_pages.add((rec["metadata"]["stream"], rec["metadata"]["page"]))
            else:
                yield from self._attachment(journal, rec["metadata"]["url"],
                                            rec["metadata"]["absolute_url"], rec["metadata"]["owner"],
                                            rec["metadata"]["content_type"])
        if lost_pages:
            yield from self._redo_pages(journal, lost_pages, done_origins)
        if st.done:
            return

        patient_id = st.patient_id
        if patient_id is None:
            patient_id = self.match_patient(query)
            journal.append({"ev": "patient", "id": patient_id, "pull_started": self.pull_started})
        self.pull_started = st.pull_started
        self._patient_id = patient_id
        mode = "search" if st.everything_refused else self.mode
        streams = plan_streams(cap, patient_id, data_classes=query.data_classes,
                               date_from=query.date_from, date_to=query.date_to, since=since,
                               page_size=self.page_size, mode=mode)
        try:
            if streams and streams[0].key != "Patient/$everything":
                yield from self._not_searchable(cap, query, done_origins)
            for stream in streams:
                yield from self._stream(journal, stream, done_origins)
        except _EverythingRefused as exc:  # e.g. not granted to backend clients: search instead
            log.warning("fhir: %s; falling back to per-type searches", exc)
            journal.append({"ev": "everything-refused", "reason": str(exc)[:300]})
            yield from self._not_searchable(cap, query, done_origins)
            for stream in plan_streams(cap, patient_id, data_classes=query.data_classes,
                                       date_from=query.date_from, date_to=query.date_to, since=since,
                                       page_size=self.page_size, mode="search"):
                yield from self._stream(journal, stream, done_origins)
        if self.want_supporting:
            yield from self._follow(journal, followed_types(query.data_classes), done_origins)
        journal.append({"ev": "done"})
        self._report("done")

    def match_patient(self, query: RecordQuery) -> str:
        return match_patient(self.http, self.base_url, query)

    def _not_searchable(self, cap: Capability, query: RecordQuery, done_origins) -> Iterator[Gap]:
        for rtype, reason in not_searchable(cap, query.data_classes):
            gap = Gap(source=self.source, kind="not-searchable", what=rtype, reason=reason)
            if f"{gap.kind}:{gap.what}" not in done_origins:
                yield gap

    # -- references the pull left dangling ------------------------------------------------
    def _follow(self, journal: PullJournal, scope, done_origins) -> Iterator[RawRecord | Gap]:
        """Read the resources others reference that the pull lacks (in rounds: a read
        resource references more), bounded by max_reference_reads; a Gap for each one
        that stays unresolved."""
        st = journal.state
        reported = self._reported = set()  # each unresolved reference once a pull
        while True:
            wanted: list[str] = []
            for ref in sorted(st.refs):
                if ref in st.seen or ref in reported:
                    continue
                if ref in st.unresolved:  # journaled earlier (this run, or before a crash)
                    reported.add(ref)
                    yield from self._gap(ref, st.unresolved[ref], done_origins)
                    continue
                verdict = references.judge(ref, self._patient_id, scope)
                if verdict == "read":
                    wanted.append(ref)
                elif verdict is not None:
                    journal.append({"ev": "unresolved", "ref": ref, "reason": verdict})
                    reported.add(ref)
                    yield from self._gap(ref, verdict, done_origins)
            if not wanted:
                return
            budget = self.max_reference_reads - st.reads
            for ref in wanted[max(budget, 0):]:
                reason = f"not read: over the limit of {self.max_reference_reads} reads a pull (max_reference_reads)"
                journal.append({"ev": "unresolved", "ref": ref, "reason": reason})
                reported.add(ref)
                yield from self._gap(ref, reason, done_origins)
            wanted = wanted[:max(budget, 0)]
            if not wanted:
                return
            by_type: dict[str, list[str]] = {}
            for ref in wanted:
                by_type.setdefault(ref.partition("/")[0], []).append(ref)
            size = max(1, min(50, self.chunk_resources))
            for rtype, refs in sorted(by_type.items()):
                for i in range(0, len(refs), size):
                    yield from self._read_batch(journal, rtype, refs[i:i + size], done_origins)

    def _gap(self, ref: str, reason: str, done_origins) -> Iterator[Gap]:
        gap = Gap(source=self.source, kind="unresolved", what=printable(ref), reason=reason)
        if f"{gap.kind}:{gap.what}" not in done_origins:
            yield gap

    def _read_batch(self, journal: PullJournal, rtype: str, refs: list[str], done_origins,
                    redo: bool = False) -> Iterator[RawRecord | Gap]:
        """Read `refs` one by one into one "fhir-json" record; journaled like a page."""
        digest = hashlib.sha256(",".join(refs).encode()).hexdigest()[:12]
        key = f"{rtype}?read#{digest}"
        path = self.workdir / f"fhir-{self._prefix}-{_short(key)}-p00000-c000.ndjson"
        lines, keys, refs_found, failed = [], [], set(), []
        bases = (self.base_url, *self.http.extra_bases)
        for ref in refs:
            got = references.read(self.http, self.base_url, ref, self._patient_id)
            if isinstance(got, str):
                failed.append((ref, got))
                continue
            line, resource = got
            lines.append(line)
            keys.append(f"{ref}@{version_marker(resource)}")
            refs_found |= references.scan(line, bases)
        records = []
        if lines:
            body = b"".join(line + b"\n" for line in lines)
            path.write_bytes(body)
            records.append({
                "kind": "fhir-json", "media_type": NDJSON, "file": path.name,
                "sha256": hashlib.sha256(body).hexdigest(), "size": len(body),
                "origin": f"{self.base_url}/{key}#page=0&chunk=0", "fetched_at": _now(),
                "metadata": {"base_url": self.base_url, "fhir_version": self.capability.fhir_version,
                             "patient_id": self._patient_id, "stream": key, "page": 0, "chunk": 0,
                             "resources": len(lines), "attachments": {}, "refused": [],
                             "pull_started": self.pull_started, "read": refs}})
            self.stats["resources"] += len(lines)
        if not redo:
            journal.append({"ev": "page", "stream": key, "page": 0, "url": rtype, "params": None,
                            "next": None, "records": records, "keys": keys, "refs": sorted(refs_found),
                            "stop": None, "reads": len(refs)})
            journal.append({"ev": "stream-done", "stream": key})
            for ref, reason in failed:
                journal.append({"ev": "unresolved", "ref": ref, "reason": reason})
        for rec in records:
            if rec["origin"] not in done_origins:
                yield self._raw(rec)
        if not redo:
            for ref, reason in failed:
                self._reported.add(ref)
                yield from self._gap(ref, reason, done_origins)
        self._report(key)

    # -- streams and pages --------------------------------------------------------------
    def _stream(self, journal: PullJournal, stream: Stream, done_origins) -> Iterator[RawRecord]:
        ss = journal.state.stream(stream.key)
        if ss.done:
            return
        if ss.stop:
            raise OutsideBase(f"next link of {stream.key} {ss.stop[len('refused URL '):]}")
        if ss.started and ss.next_url is None:
            journal.append({"ev": "stream-done", "stream": stream.key})
            return
        url, params = (ss.next_url, None) if ss.started else (stream.path, list(stream.params))
        page = ss.pages
        while url:
            try:
                result, records, url_used = yield from self._page(journal, stream, page, url, params,
                                                                  done_origins)
            except HttpRejected as exc:
                if page != 0 or exc.status not in REFUSED_SEARCH:
                    raise
                if stream.key == "Patient/$everything":
                    raise _EverythingRefused(str(exc)) from None
                # the server will not run this search (type or parameter not supported, not
                # granted): reported as a rejected record, the other types go on
                origin = f"refused search {stream.key}"
                if origin not in done_origins:
                    yield RejectedRecord(source=self.source, origin=origin, reason=str(exc)[:300])
                journal.append({"ev": "stream-done", "stream": stream.key, "refused": str(exc)[:300]})
                return
            nxt = None
            stop = None
            if result.next_url:
                try:
                    nxt = self.http.resolve(result.next_url)
                except OutsideBase as exc:
                    stop = str(exc)
            journal.append({"ev": "page", "stream": stream.key, "page": page, "url": url_used,
                            "params": params, "next": nxt, "records": records,
                            "keys": [f"{k}@{v}" for k, v in result.keys.items()],
                            "refs": sorted(result.refs), "stop": stop})
            for rec in records:
                if rec["origin"] not in done_origins:
                    yield self._raw(rec)
            self._report(stream.key)
            if stop:
                raise OutsideBase(f"next link of {stream.key} {stop[len('refused URL '):]}")
            url, params = nxt, None
            page += 1
        journal.append({"ev": "stream-done", "stream": stream.key})

    def _page(self, journal, stream: Stream, page: int, url: str, params, done_origins,
              redo_keys: set[str] = frozenset()):
        """Fetch one page, write its chunks and attachments; returns (result, records, url)."""
        st = journal.state
        seen = st.seen if not redo_keys else {k: v for k, v in st.seen.items() if k not in redo_keys}
        for attempt in range(3):
            got = self.http.get(url, params=params, accept=FHIR_JSON, to_dir=self.workdir)
            prefix = self.workdir / f"fhir-{self._prefix}-{_short(stream.key)}-p{page:05d}"
            try:
                result: PageResult = split_page(
                    got.path, prefix, seen=seen, supporting=(),
                    base_url=self.base_url, chunk_resources=self.chunk_resources,
                    chunk_bytes=self.chunk_bytes, want_attachments=self.want_attachments,
                    patient_id=self._patient_id)
                break
            except PageBroken as exc:
                if attempt == 2:
                    raise SourceUnavailable(f"page {page} of {stream.key} is broken three times: {exc}") from None
                log.info("fhir: page %d of %s broken (%s); fetching again", page, stream.key, exc)
            finally:
                got.path.unlink(missing_ok=True)
        if self.want_supporting:  # what the page references, to read what the pull lacks
            bases = (self.base_url, *self.http.extra_bases)
            for chunk in result.chunks:
                result.refs |= references.scan_file(chunk.path, bases)
        self.stats["pages"] += 1
        self.stats["resources"] += result.resources
        self.stats["duplicates"] += result.duplicates
        self.stats["outcomes"] += result.outcomes
        fetched_at = _now()
        attachment_ids: dict[str, str] = {}
        refused: list[dict] = []
        for rkey, reason in result.refused:  # another patient's: reported, never delivered
            self.stats["refused"] += 1
            origin = f"{self.base_url}/{rkey}"
            if origin not in done_origins:
                yield SkippedRecord(source=self.source, origin=printable(origin), reason=reason)
        for att in result.attachments:
            try:
                absolute = self.http.resolve(att.url)
            except OutsideBase as exc:
                log.warning("fhir: %s", exc)
                known = {"refused": "outside the server base (refused)"}
            else:
                known = st.attachments.get(absolute)
                if known is None:
                    yield from self._attachment(journal, att.url, absolute, att.owner, att.content_type)
                    known = st.attachments.get(absolute) or {"refused": "not fetched"}
            if "refused" not in known:
                attachment_ids[att.url] = known["metadata"]["binary_id"]
                continue
            refused.append({"url": att.url, "reason": known["refused"]})
            self.stats["refused"] += 1
            origin = f"refused attachment {printable(att.url)} of {att.owner.get('resourceType')}/" \
                     f"{printable(str(att.owner.get('id')))}"
            if origin not in done_origins:
                yield RejectedRecord(source=self.source, origin=origin, reason=known["refused"])
        records = []
        for i, chunk in enumerate(result.chunks):
            sha, size = chunk.sha256, chunk.size
            records.append({
                "kind": "fhir-json", "media_type": NDJSON, "file": chunk.path.name, "sha256": sha,
                "size": size, "origin": f"{self.base_url}/{stream.key}#page={page}&chunk={i}",
                "fetched_at": fetched_at,
                "metadata": {"base_url": self.base_url, "fhir_version": self.capability.fhir_version,
                             "patient_id": self._patient_id, "stream": stream.key, "page": page,
                             "chunk": i, "resources": chunk.count,
                             "attachments": {u: b for u, b in attachment_ids.items()},
                             "refused": refused, "pull_started": self.pull_started},
            })
        return result, records, got.url

    def _attachment(self, journal, url: str, absolute: str, owner: dict, content_type) -> Iterator[RawRecord]:
        name = f"fhir-{self._prefix}-att-{hashlib.sha256(absolute.encode()).hexdigest()[:24]}"
        try:
            path, media_type = fetch_attachment(self.http, absolute, content_type, self.workdir, name,
                                                self.max_binary_json)
        except SourceUnavailable:
            raise
        except SourceRejected as exc:
            journal.append({"ev": "attachment-refused", "url": absolute, "reason": str(exc)[:300]})
            return
        sha, size = hash_file(path)
        local = absolute[len(self.base_url) + 1:] if absolute.startswith(self.base_url + "/") else ""
        rtype, _, rid = local.partition("/")
        if rtype == "Binary" and rid and "/" not in rid and "?" not in rid:
            binary_id = resource_uuid(self.base_url, "Binary", rid)  # the Binary's own downstream id
        else:
            binary_id = str(uuid.uuid5(uuid.NAMESPACE_URL, absolute))
        rec = {"kind": "fhir-attachment", "media_type": media_type, "file": path.name, "sha256": sha,
               "size": size, "origin": absolute, "fetched_at": _now(),
               "metadata": {"base_url": self.base_url, "url": url, "absolute_url": absolute,
                            "binary_id": binary_id, "owner": owner, "content_type": content_type}}
        journal.append({"ev": "attachment", "record": rec})
        self.stats["attachments"] += 1
        yield self._raw(rec)

    def _redo_pages(self, journal, pages: set[tuple[str, int]], done_origins) -> Iterator[RawRecord]:
        """Fetch again pages whose record files vanished before the gateway stored them."""
        by_page: dict[tuple[str, int], dict] = {}
        with open(journal.path, "rb") as fh:
            for line in fh:
                try:
                    ev = orjson.loads(line)
                except orjson.JSONDecodeError:
                    break
                if ev.get("ev") == "page" and (ev["stream"], ev["page"]) in pages:
                    by_page[(ev["stream"], ev["page"])] = ev
        self._patient_id = journal.state.patient_id
        for (skey, page), ev in sorted(by_page.items()):
            keys = {k.partition("@")[0] for k in ev.get("keys", ())}
            if "?read#" in skey:  # resources read by reference: read them again
                rtype = skey.partition("?")[0]
                yield from self._read_batch(journal, rtype, sorted(ev["records"][0]["metadata"]["read"]),
                                            done_origins, redo=True)
                continue
            stream = Stream(skey, ev["url"], ())
            _, records, _ = yield from self._page(journal, stream, page, ev["url"], None,
                                                  done_origins, redo_keys=keys)
            for rec in records:
                if rec["origin"] not in done_origins:
                    yield self._raw(rec)

    # -- helpers --------------------------------------------------------------------
    def _capability(self) -> Capability:
        if self.capability is None:
            got = self.http.get("metadata", accept=FHIR_JSON)
            try:
                doc = orjson.loads(got.content)
            except orjson.JSONDecodeError:
                raise SourceRejected("/metadata is not JSON") from None
            cap = Capability.from_statement(doc)
            cap.check_version()
            self.capability = cap
            # the server's clock when the pull began: the next incremental pull's `since`
            self.pull_started = _server_time(got.headers) or _now()
        return self.capability

    def _raw(self, rec: dict) -> RawRecord:
        return RawRecord(source=self.source, kind=rec["kind"], media_type=rec["media_type"],
                         path=self.workdir / rec["file"], sha256=rec["sha256"], size=rec["size"],
                         origin=rec["origin"], fetched_at=datetime.fromisoformat(rec["fetched_at"]),
                         metadata=rec["metadata"])

    def _from_journal(self, rec: dict) -> RawRecord | None:
        if "file" not in rec:
            return None
        path = self.workdir / rec["file"]
        if not path.exists() or hash_file(path) != (rec["sha256"], rec["size"]):
            return None
        return self._raw(rec)

    def _on_bytes(self, n: int) -> None:
        self.stats["bytes"] += n

    def _report(self, where: str) -> None:
        s = self.stats
        self.progress(Progress(done=s["resources"], total=None, bytes=s["bytes"],
                               message=f"{where}: {s['pages']} pages, {s['resources']} resources, "
                                       f"{s['attachments']} attachments, {s['duplicates']} duplicates skipped"))


def printable(value: str, limit: int = 200) -> str:
    """A value from the server made safe to show: non-printables escaped, length bounded."""
    text = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in value[:limit])
    return text + ("..." if len(value) > limit else "")


def _short(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:10]


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _server_time(headers: dict) -> str | None:
    value = headers.get("date")
    if not value:
        return None
    try:
        return email.utils.parsedate_to_datetime(value).astimezone(timezone.utc).isoformat()
    except (TypeError, ValueError):
        return None
