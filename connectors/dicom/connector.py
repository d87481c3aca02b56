"""The imaging connectors: find the authorized studies, retrieve them complete, yield them.

Kinds (connectors/__init__.py):
- "dicom": a PACS over DIMSE (C-FIND, then C-MOVE to our Storage SCP or C-GET), or over
  DICOMweb when it offers it (`dicomweb_url`): `retrieve = auto` picks WADO-RS when a
  DICOMweb URL is configured, else C-MOVE when a Storage SCP is configured, else C-GET;
  `retrieve = move | get | wado` forces one.
- "dicomweb": a DICOMweb-only source (QIDO-RS + WADO-RS).

For each study: find it by the authorization's patient identifiers (narrowed by its date
range and configured modalities, re-checked locally), list its series with their
announced instance counts, retrieve series by series over `parallel` associations or
requests, then compare what arrived with what was announced and with the PACS's final
sub-operation counts. Shortfalls are named instance by instance (an instance-level query)
and retried alone, `retries` times. Then it yields one "dicom" record per instance and,
once the study is complete, a "dicom-study" manifest for the ImagingStudy mapping; if a
study stays incomplete, `fetch` ends by raising `StudyIncomplete`, naming what is
missing, and a later pull with `already_fetched` retrieves only that. Once
`incomplete_attempts` pulls in a row (counted in the workdir, so across worker restarts:
connectors.dicom.attempts) fetched nothing new for a study, it ends the source with
`StudyNotSent` (terminal), naming the missing instances; or, with `allow_incomplete`,
delivers the rest with a SkippedRecord per instance the PACS never sent and a manifest
marked incomplete.

A study whose patient's birth date or family name differs from the authorization's
(same PatientID) is not taken: a SkippedRecord names the study and which one differed.

C-GET proposes each (SOP class, transfer syntax) pair in a presentation context of its
own, so the PACS sends every instance in the syntax it holds (backends.py); our Storage
SCP accepts every syntax as received (scp.ACCEPTED_SYNTAXES).

Options: host, port, ae_title (the PACS), calling_aet (ours), scp_port / scp_host /
scp_aet (our Storage SCP; its AE title defaults to calling_aet), sender_aet / sender_hosts
(who the PACS's C-MOVE sub-operations come from; default ae_title / host), dicomweb_url,
dicomweb_headers, retrieve, parallel (2), retries (2), patient_id_systems, modalities,
stall_timeout (900 s), start_timeout (120 s), sink (a callable, see
connectors.dicom.intake), spool, intake_workers (4), incomplete_attempts (3),
allow_incomplete (false), moves (where the C-MOVEs' instances are received instead of an
SCP in this process: an object with the `expect`, `on_response`, `settle` and `check` of
scp.StorageSCP; the gateway's standing receiver gives one, scp_aet names it).
"""
from __future__ import annotations

import logging
import queue
import threading
import unicodedata
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

from connectors.base import (
    Connector,
    Progress,
    RawRecord,
    RecordQuery,
    RejectedRecord,
    SkippedRecord,
    SourceRejected,
    SourceUnavailable,
)

from .attempts import AttemptJournal
from .backends import DimseBackend, WebBackend, instance_info
from .intake import FolderSink, Retrieval
from .study import (
    SeriesPlan,
    StudyIncomplete,
    StudyNotSent,
    StudyOutcome,
    StudyPlan,
    date_range,
    in_range,
    instance_record,
    judge,
    manifest_record,
    not_sent_records,
    parse_already,
    rejected_record,
    wants_imaging,
    without_missing,
)
from .uids import clean_uid

LOGGER = logging.getLogger(__name__)

_WILDCARDS = set("*?\\")


def _text(value) -> str:
    return "" if value is None else str(value)


def _flag(value) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("1", "true", "yes", "on")
    return bool(value)


def _name_key(value: str) -> str:
    """A family name compared loosely: case, accents, spaces and punctuation aside."""
    decomposed = unicodedata.normalize("NFKD", value.casefold())
    return "".join(c for c in decomposed if c.isalnum())


def demographic_mismatch(query: RecordQuery, birth: str, name: str) -> str:
    """Which of the study's patient demographics differs from the authorization's ("birth
    date", "family name"), or "" (equal, or not given on one side). Never the values."""
    if query.birth_date and birth and birth[:8] != query.birth_date.strftime("%Y%m%d"):
        return "birth date"
    # DICOM PN: family^given^middle^prefix^suffix, alphabetic=ideographic=phonetic
    family = name.split("=", 1)[0].split("^", 1)[0]
    if query.family_name and _name_key(family) and \
            _name_key(family) != _name_key(query.family_name):
        return "family name"
    return ""


class ImagingConnector(Connector):
    """Shared study-by-study retrieve; `_backend()` picks the protocol."""

    name = "dicom"
    transient_errors = (SourceUnavailable,)

    def __init__(self, source, options, workdir, progress=None):
        super().__init__(source, options, workdir, progress)
        self.retries = int(options.get("retries", 2))
        self.parallel = max(1, int(options.get("parallel", 2)))
        self.sink = options.get("sink") or FolderSink(self.workdir / "dicom")
        self.spool = Path(options.get("spool") or self.workdir / "spool")
        self.outcomes: list[StudyOutcome] = []
        self.skipped: dict[str, SkippedRecord] = {}
        # pulls in a row that may leave a study incomplete with nothing new fetched, then
        # the source fails naming what is missing, or (allow_incomplete) the rest goes
        try:
            self.incomplete_attempts = int(options.get("incomplete_attempts", 3))
        except (TypeError, ValueError):
            self.incomplete_attempts = 0
        if self.incomplete_attempts < 1:
            raise SourceRejected(f"source {source}: incomplete_attempts must be a whole "
                                 f"number of pulls, 1 or more")
        self.allow_incomplete = _flag(options.get("allow_incomplete", False))
        self.abandoned: list[StudyOutcome] = []  # given up on: the source fails
        self.settled: set[str] = set()  # delivered incomplete (allow_incomplete)
        self.attempts = 0
        self.journal = AttemptJournal(self.workdir)
        self.backend = self._backend()

    def _backend(self):
        use_web = self.options.get("dicomweb_url") and self.options.get(
            "retrieve", "auto") in ("auto", "wado")
        return WebBackend(self.options) if use_web else DimseBackend(self.options)

    def endpoint(self) -> dict:
        if isinstance(self.backend, WebBackend):
            return {"type": "dicom-wado-rs", "address": self.backend.client.base}
        peer = self.backend.scu.peer
        return {"type": "dicom-c-move" if self.backend.method == "move" else "dicom-c-get",
                "address": f"dicom://{peer.ae_title}@{peer.host}:{peer.port}"}

    def check(self) -> None:
        self.backend.echo()

    def close(self) -> None:
        self.backend.close()

    # -- find ------------------------------------------------------------------------------
    def _patient_ids(self, query: RecordQuery) -> list[str]:
        systems = self.options.get("patient_id_systems")
        ids = []
        for ident in query.identifiers:
            if systems and ident.system not in systems:
                continue
            if not ident.value or len(ident.value) > 64 or _WILDCARDS & set(ident.value):
                LOGGER.warning("patient identifier of system %s not usable as PatientID",
                               ident.system)
                continue
            ids.append(ident.value)
        if not ids:
            raise SourceRejected("no patient identifier usable as a DICOM PatientID")
        return list(dict.fromkeys(ids))

    def find_studies(self, query: RecordQuery) -> list[StudyPlan]:
        """The authorized patient's studies; those of someone else under the same
        PatientID (birth date or family name differs) go to `self.skipped`."""
        ids = self._patient_ids(query)
        modalities = [m.upper() for m in self.options.get("modalities") or []]
        found: dict[str, StudyPlan] = {}
        self.skipped = {}
        for pid in ids:
            match = {"PatientID": pid}
            if date_range(query):
                match["StudyDate"] = date_range(query)
            if modalities:
                match["ModalitiesInStudy"] = modalities if len(modalities) > 1 else modalities[0]
            for row in self.backend.studies(match):
                uid = clean_uid(row.get("StudyInstanceUID"))
                if uid is None or uid in found:
                    continue
                if _text(row.get("PatientID")) != pid:
                    continue  # the PACS matched more loosely than asked
                birth = _text(row.get("PatientBirthDate"))
                differs = demographic_mismatch(query, birth, _text(row.get("PatientName")))
                if differs:
                    LOGGER.warning("study skipped: PatientID matches, %s differs", differs)
                    self.skipped[uid] = SkippedRecord(
                        self.source, uid, f"another patient's demographics: the study's "
                        f"{differs} differs from the authorization's (PatientID matches)")
                    continue
                if not in_range(_text(row.get("StudyDate")), query):
                    continue
                in_study = row.get("ModalitiesInStudy") or []
                in_study = [in_study] if isinstance(in_study, str) else in_study
                if modalities and in_study and not set(modalities) & set(in_study):
                    continue
                classes = row.get("SOPClassesInStudy") or []
                found[uid] = StudyPlan(
                    uid, patient_id=pid, patient_name=_text(row.get("PatientName")),
                    birth_date=birth, date=_text(row.get("StudyDate")),
                    time=_text(row.get("StudyTime")),
                    accession=_text(row.get("AccessionNumber")),
                    description=_text(row.get("StudyDescription")),
                    referrer=_text(row.get("ReferringPhysicianName")),
                    study_id=_text(row.get("StudyID")), modalities=list(in_study),
                    sop_classes=[c for c in ([classes] if isinstance(classes, str)
                                             else classes) if clean_uid(c)],
                    expected=row.get("NumberOfStudyRelatedInstances"))
        return sorted(found.values(), key=lambda p: (p.date, p.uid))

    def plan_series(self, plan: StudyPlan) -> None:
        for row in self.backend.series(plan.uid):
            uid = clean_uid(row.get("SeriesInstanceUID"))
            if uid is None:
                continue
            plan.series[uid] = SeriesPlan(
                uid, modality=_text(row.get("Modality")), number=row.get("SeriesNumber"),
                description=_text(row.get("SeriesDescription")),
                body_part=_text(row.get("BodyPartExamined")),
                laterality=_text(row.get("Laterality")),
                started=_text(row.get("SeriesDate")) + _text(row.get("SeriesTime")),
                expected=row.get("NumberOfSeriesRelatedInstances"))

    def list_instances(self, plan: StudyPlan, series: SeriesPlan) -> None:
        series.instances = {}
        for row in self.backend.instances(plan.uid, series.uid):
            info = instance_info(row)
            if info is not None:
                series.instances[info.sop_instance_uid] = info

    # -- retrieve ----------------------------------------------------------------------------
    def _run_units(self, units, retrieval: Retrieval, plan: StudyPlan) -> int:
        """Retrieve `units` over up to `parallel` workers; returns failed sub-operations."""
        work: queue.Queue = queue.Queue()
        for unit in units:
            work.put(unit)
        failed = [0]
        errors: list[BaseException] = []
        lock = threading.Lock()

        def worker():
            while True:
                try:
                    unit = work.get_nowait()
                except queue.Empty:
                    return
                try:
                    n = self.backend.retrieve(unit, retrieval, plan)
                    with lock:
                        failed[0] += n
                except BaseException as exc:  # noqa: BLE001 - re-raised below
                    errors.append(exc)

        threads = [threading.Thread(target=worker, name="dicom-retrieve", daemon=True)
                   for _ in range(min(self.parallel, len(units)))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        retrieval.wait_settled()
        rejected = [e for e in errors if isinstance(e, SourceRejected)]
        if rejected:
            raise rejected[0]
        if errors and not retrieval.received:
            raise errors[0]
        for e in errors:
            LOGGER.warning("retrieve unit failed: %s", e)
        return failed[0]

    def _units_for(self, plan: StudyPlan, already: dict[str, set[str]]) -> list:
        if not plan.series:
            return [("study", None, None)]
        units = []
        for s in sorted(plan.series.values(), key=lambda s: -(s.expected or 0)):
            have = already.get(s.uid, set())
            if not have:
                units.append(("series", s.uid, None))
            elif s.expected is None or len(have) < s.expected:
                self.list_instances(plan, s)
                missing = sorted(set(s.instances) - have)
                if missing:
                    units.append(("image", s.uid, missing))
        if len(units) == 1 and units[0][0] == "series" and self.parallel > 1:
            s = plan.series[units[0][1]]
            if (s.expected or 0) >= 8 * self.parallel:
                # one big series: split it by instance so it, too, goes in parallel
                self.list_instances(plan, s)
                sops = sorted(s.instances)
                units = [("image", s.uid, sops[i::self.parallel])
                         for i in range(self.parallel)]
        return units

    def _report(self, retrieval: Retrieval, total: int | None):
        def on_received(item):
            n = len(retrieval.received)
            if n == 1 or n % 25 == 0 or (total and n == total):
                self.progress(Progress(done=n, total=total, bytes=retrieval.bytes,
                                       message="receiving instances"))
        return on_received

    def retrieve_study(self, plan: StudyPlan, query: RecordQuery,
                       already: dict[str, set[str]]) -> Iterator[RawRecord | RejectedRecord]:
        self.spool.mkdir(parents=True, exist_ok=True)
        retrieval = Retrieval(query.transfer_id, self.sink, studies=frozenset({plan.uid}),
                              patient_ids=frozenset({plan.patient_id}) if plan.patient_id
                              else frozenset(), spool=self.spool,
                              workers=int(self.options.get("intake_workers", 4)))
        retrieval.on_received = self._report(retrieval, plan.expected)
        try:
            yield from self._retrieve(plan, already, retrieval)
        finally:
            retrieval.close()

    def _retrieve(self, plan, already, retrieval):
        self.plan_series(plan)
        failed = self._run_units(self._units_for(plan, already), retrieval, plan)
        outcome = judge(plan, retrieval, already, failed)
        for attempt in range(self.retries + 1):
            if outcome.complete:
                break
            for suid in outcome.missing_unnamed:
                if suid and suid in plan.series:
                    self.list_instances(plan, plan.series[suid])
            outcome = judge(plan, retrieval, already, failed)
            if outcome.complete or attempt == self.retries:
                break
            by_series: dict[str, list[str]] = {}
            missing = set(outcome.missing)
            for s in plan.series.values():
                for sop in sorted(set(s.instances or ()) & missing):
                    by_series.setdefault(s.uid, []).append(sop)
            if not by_series:
                break
            LOGGER.info("study retrieve incomplete: retrying %d instances", len(missing))
            failed += self._run_units([("image", suid, sops) for suid, sops in
                                       by_series.items()], retrieval, plan)
            outcome = judge(plan, retrieval, already, failed)
        received = list(retrieval.received.values())
        for item in received:
            yield instance_record(self.source, item)
        for error in list(retrieval.errors.values()):
            if error.permanent:
                yield rejected_record(self.source, error)
        for conflict in list(retrieval.conflicts):  # a second, different copy: tampering?
            yield rejected_record(self.source, conflict)
        if not outcome.complete:
            # pulls in a row that fetched nothing new: bounded, counted across restarts
            attempts = self.journal.note(plan.uid, outcome.received > 0)
            if attempts < self.incomplete_attempts:
                self.outcomes.append(outcome)
                return
            if not self.allow_incomplete:
                self.outcomes.append(outcome)
                self.abandoned.append(outcome)
                self.attempts = max(self.attempts, attempts)
                return
            LOGGER.warning("study delivered incomplete (allow_incomplete): %d missing",
                           len(outcome.missing) + sum(outcome.missing_unnamed.values()))
            yield from not_sent_records(self.source, plan, outcome, attempts)
            plan = without_missing(plan, outcome)
            self.settled.add(plan.uid)
        self.outcomes.append(outcome)
        self.journal.forget(plan.uid)
        for s in plan.series.values():
            if already.get(s.uid) and s.instances is None:
                self.list_instances(plan, s)  # earlier runs' instances, for the manifest
        yield manifest_record(self.source, self.workdir / "manifests", plan, received,
                              outcome, self.endpoint())

    def fetch(self, query: RecordQuery) -> Iterator[RawRecord | RejectedRecord]:
        if not wants_imaging(query):
            return
        self.outcomes, self.abandoned, self.attempts, self.settled = [], [], 0, set()
        self.journal = AttemptJournal(self.workdir)
        started = datetime.now(timezone.utc).isoformat()
        if query.since is not None:  # incremental: studies dated from the last pull on
            since = query.since.date()
            query = replace(query, date_from=max(since, query.date_from or since))
        already = parse_already(query.already_fetched)
        plans = self.find_studies(query)
        for uid, skipped in sorted(self.skipped.items()):
            if uid not in query.already_fetched:
                yield skipped  # found, not taken: the transfer says so and why
        for plan in plans:
            if plan.uid in query.already_fetched:
                continue  # its manifest was produced: complete in an earlier run
            for record in self.retrieve_study(plan, query, already.get(plan.uid, {})):
                if isinstance(record, RawRecord):  # the cursor of the next incremental pull
                    record.metadata.setdefault("pull_started", started)
                yield record
        given_up = {o.study_uid for o in self.abandoned} | self.settled
        retrying = [o for o in self.outcomes if not o.complete and o.study_uid not in given_up]
        if retrying:
            raise StudyIncomplete([o for o in self.outcomes if not o.complete])
        if self.abandoned:
            raise StudyNotSent(self.source, self.abandoned, self.attempts)


class DicomConnector(ImagingConnector):
    """A PACS over DIMSE, or over DICOMweb where configured (see module docs)."""

    name = "dicom"


class DicomWebConnector(ImagingConnector):
    """A DICOMweb-only source: QIDO-RS to find, WADO-RS to retrieve."""

    name = "dicomweb"

    def _backend(self):
        if not self.options.get("dicomweb_url"):
            raise SourceRejected("a dicomweb source needs dicomweb_url")
        return WebBackend(self.options)
