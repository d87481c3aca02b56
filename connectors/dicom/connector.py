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
own, so the PACS sends every instance in the syntax it holds (qr.get_contexts); our
Storage SCP accepts every syntax as received (scp.ACCEPTED_SYNTAXES).

Options: host, port, ae_title (the PACS), calling_aet (ours), scp_port / scp_host /
scp_aet (our Storage SCP; its AE title defaults to calling_aet), dicomweb_url,
dicomweb_headers, retrieve, parallel (2), retries (2), patient_id_systems, modalities,
stall_timeout (900 s), start_timeout (120 s), sink (a callable, see
connectors.dicom.intake), spool, intake_workers (4), incomplete_attempts (3),
allow_incomplete (false).
"""
from __future__ import annotations

import logging
import queue
import threading
import unicodedata
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
from .intake import FolderSink, Retrieval
from .qr import (
    IMAGE_KEYS,
    SERIES_KEYS,
    STUDY_KEYS,
    DimsePeer,
    QueryRetrieveSCU,
    RetrieveStatus,
    fits,
    storage_classes,
)
from .scp import ACCEPTED_SYNTAXES, EXPLICIT_LE, StorageSCP
from .study import (
    InstanceInfo,
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
from .web import DicomWebClient

LOGGER = logging.getLogger(__name__)

_WILDCARDS = set("*?\\")

# One Storage SCP per (AE title, host, port) in this process, shared by every transfer.
_scps: dict[tuple, list] = {}
_scps_lock = threading.Lock()


def acquire_scp(ae_title: str, port: int, host: str = "0.0.0.0") -> StorageSCP:
    with _scps_lock:
        entry = _scps.get((ae_title, host, port))
        if entry is None:
            entry = _scps[(ae_title, host, port)] = [StorageSCP(ae_title, port, host).start(), 0]
        entry[1] += 1
        return entry[0]


def release_scp(scp: StorageSCP) -> None:
    with _scps_lock:
        for key, entry in list(_scps.items()):
            if entry[0] is scp:
                entry[1] -= 1
                if entry[1] <= 0:
                    scp.stop()
                    del _scps[key]
                return


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


def _instance_info(row: dict) -> InstanceInfo | None:
    """An instance-level query answer; None without a valid SOP Instance UID."""
    uid = clean_uid(row.get("SOPInstanceUID"))
    if uid is None:
        return None
    held = row.get("AvailableTransferSyntaxUID") or []
    held = [held] if isinstance(held, str) else held
    return InstanceInfo(uid, _text(row.get("SOPClassUID")), row.get("InstanceNumber"),
                        row.get("NumberOfFrames"),
                        [u for u in (clean_uid(v) for v in held) if u])


def _groups(by_class: dict[str, list[InstanceInfo]]) -> list[list[str]]:
    """SOP classes in groups that fit one C-GET association each, with the syntaxes
    their instances need (the common set where the PACS did not say)."""
    groups: list[list[str]] = []
    group: list[str] = []
    for klass in sorted(by_class):
        trial = group + [klass]
        members = [i for c in trial for i in by_class[c]]
        if group and len(trial) > fits(trial, _syntaxes(members)):
            groups.append(group)
            trial = [klass]
        group = trial
    if group:
        groups.append(group)
    return groups


def _syntaxes(infos) -> list[str] | None:
    """The transfer syntaxes to propose for these instances: the ones the PACS says it
    holds them in (with Explicit VR Little Endian beside, should it prefer to convert),
    or None (the common set) when it does not say for every one of them."""
    infos = list(infos)
    if not infos or not all(i.syntaxes for i in infos):
        return None
    return list(dict.fromkeys([s for i in infos for s in i.syntaxes] + [EXPLICIT_LE]))


class _DimseBackend:
    def __init__(self, options: dict):
        self.scu = QueryRetrieveSCU(
            DimsePeer(options["host"], int(options["port"]), options["ae_title"],
                      options.get("calling_aet", "GATEWAY")),
            stall_timeout=float(options.get("stall_timeout", 900)),
            start_timeout=float(options.get("start_timeout", 120)))

        self.options = options
        method = options.get("retrieve", "auto")
        self.method = "move" if method == "auto" and options.get("scp_port") is not None \
            else ("get" if method == "auto" else method)
        self.scp = None
        self.move_dest = options.get("scp_aet") or options.get("calling_aet", "GATEWAY")
        if self.method == "move":
            if options.get("scp_port") is None:
                raise SourceRejected("retrieve = move needs scp_port (our Storage SCP)")
            try:
                self.scp = acquire_scp(self.move_dest, int(options["scp_port"]),
                                       options.get("scp_host", "0.0.0.0"))
            except OSError as exc:  # e.g. another worker process holds the port
                raise SourceUnavailable(f"cannot listen for C-MOVE on port "
                                        f"{options['scp_port']}: {exc.strerror}") from None
        self.uid_lists = True  # does the PACS accept UID lists in C-MOVE/C-GET?

    def close(self):
        if self.scp is not None:
            release_scp(self.scp)
            self.scp = None

    def echo(self):
        self.scu.echo()

    def studies(self, match):
        return self.scu.find("STUDY", match, STUDY_KEYS)

    def series(self, study):
        return self.scu.find("SERIES", {"StudyInstanceUID": study}, SERIES_KEYS)

    def instances(self, study, series):
        return self.scu.find("IMAGE", {"StudyInstanceUID": study, "SeriesInstanceUID": series},
                             IMAGE_KEYS)

    def _one(self, level, study, series, sops, retrieval, plan) -> RetrieveStatus:
        ident = self.scu._identifier(level, study, series, sops)
        if self.method == "get":
            return self._get(ident, level, series, sops, retrieval, plan)
        with self.scp.expect(retrieval, self.scu.peer.ae_title, studies=[study]) as move_id:
            return self.scu.move(ident, self.move_dest, move_id, retrieval)

    # -- C-GET: propose what the PACS holds, so it sends it as it is ----------------------
    def _get(self, ident, level, series, sops, retrieval, plan) -> RetrieveStatus:
        """One C-GET when the study's SOP classes (from C-FIND) fit one association with
        every transfer syntax we take (or the common ones, or those the instance-level
        query says its instances are held in), one context per pair. Otherwise
        the unit's instances grouped by SOP class, one C-GET (a UID list) per group; an
        instance whose class the PACS did not say is retrieved alone, trying the study's
        classes group by group (a PACS ends a C-GET at an instance it cannot send)."""
        classes = storage_classes(plan.sop_classes)
        for syntaxes in (ACCEPTED_SYNTAXES, None):  # every syntax if it fits, else common
            if classes and len(classes) <= fits(classes, syntaxes):
                return self.scu.get(ident, retrieval, classes, syntaxes)
        infos = self._infos(plan, series, sops)
        classes = classes or storage_classes(i.sop_class_uid for i in infos.values())
        syntaxes = _syntaxes(infos.values())
        if classes and len(classes) <= fits(classes, syntaxes):
            return self.scu.get(ident, retrieval, classes, syntaxes)
        if level == "STUDY" or not infos:
            LOGGER.warning("C-GET without the study's SOP classes: the PACS may convert")
            return self.scu.get(ident, retrieval)
        by_class: dict[str, list[InstanceInfo]] = {}
        for info in infos.values():
            klass = info.sop_class_uid if storage_classes([info.sop_class_uid]) else ""
            by_class.setdefault(klass, []).append(info)
        total = RetrieveStatus(0x0000)

        def add(status: RetrieveStatus, wanted: int) -> None:
            total.completed += status.completed
            total.failed += status.failed + (0 if status.ok else max(
                0, wanted - status.completed - status.failed))
            if not status.ok:
                total.reason = status.reason

        for group in _groups({c: m for c, m in by_class.items() if c}):
            members = [i for c in group for i in by_class[c]]
            uids = sorted(i.sop_instance_uid for i in members)
            add(self.scu.get(self.scu._identifier("IMAGE", plan.uid, series, uids), retrieval,
                             group, _syntaxes(members)), len(uids))
        unknown = sorted(i.sop_instance_uid for i in by_class.get("", []))
        if unknown and not classes:
            LOGGER.warning("C-GET without the instances' SOP classes: the PACS may convert")
            add(self.scu.get(self.scu._identifier("IMAGE", plan.uid, series, unknown),
                             retrieval), len(unknown))
        elif unknown:
            chunks = [classes[i:i + fits(classes)] for i in range(0, len(classes),
                                                                    fits(classes))]
            for sop in unknown:
                for n, chunk in enumerate(chunks):
                    status = self.scu.get(self.scu._identifier("IMAGE", plan.uid, series,
                                                               [sop]), retrieval, chunk)
                    if status.completed:
                        chunks.insert(0, chunks.pop(n))  # the next is likely of this class
                        break
                total.completed += status.completed
                total.failed += 0 if status.completed else 1
        return total

    def _infos(self, plan, series, sops) -> dict[str, InstanceInfo]:
        """What the instance-level query said of the unit's instances (queried here
        for a series not listed yet)."""
        if series is None:
            return {}
        s = plan.series.get(series)
        if s is not None and s.instances is None:
            s.instances = {}
            for row in self.instances(plan.uid, series):
                info = _instance_info(row)
                if info is not None:
                    s.instances[info.sop_instance_uid] = info
        listed = s.instances if s is not None else {}
        wanted = set(sops) if sops else set(listed)
        return {uid: i for uid, i in listed.items() if uid in wanted}

    def retrieve(self, unit, retrieval, plan) -> int:
        level, series, sops = unit
        if level == "study":
            status = self._one("STUDY", plan.uid, None, None, retrieval, plan)
        elif level == "series":
            status = self._one("SERIES", plan.uid, series, None, retrieval, plan)
        else:
            status = None
            if self.uid_lists or len(sops) == 1:
                status = self._one("IMAGE", plan.uid, series, sops, retrieval, plan)
                if len(sops) > 1 and not status.ok and status.completed == 0:
                    self.uid_lists = False  # retry one instance at a time
                    status = None
            if status is None:
                failed = 0
                for sop in sops:
                    s = self._one("IMAGE", plan.uid, series, [sop], retrieval, plan)
                    failed += s.failed + (0 if s.ok else 1)
                return failed
        if status.status is None:
            LOGGER.warning("retrieve of %s %s: %s", level, series or plan.uid, status.reason)
        return status.failed


class _WebBackend:
    def __init__(self, options: dict):
        self.client = DicomWebClient(options["dicomweb_url"],
                                     headers=options.get("dicomweb_headers"),
                                     auth=options.get("dicomweb_auth"),
                                     verify=options.get("verify", True),
                                     timeout=float(options.get("timeout", 60)))

    def close(self):
        self.client.session.close()

    def echo(self):
        self.client.echo()

    def studies(self, match):
        return self.client.search_studies(match)

    def series(self, study):
        return self.client.search_series(study)

    def instances(self, study, series):
        return self.client.search_instances(study, series)

    def retrieve(self, unit, retrieval, plan) -> int:
        """WADO-RS one unit; a 404 (gone since the query) counts as failed, not fatal."""
        level, series, sops = unit
        targets = [(plan.uid, None, None)] if level == "study" else \
            [(plan.uid, series, None)] if level == "series" else \
            [(plan.uid, series, sop) for sop in sops]
        failed = 0
        for study, series_uid, sop in targets:
            try:
                self.client.retrieve(retrieval, study, series_uid, sop)
            except SourceRejected as exc:
                if getattr(exc, "status", None) != 404:
                    raise
                failed += 1
        return failed


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
        return _WebBackend(self.options) if use_web else _DimseBackend(self.options)

    def endpoint(self) -> dict:
        if isinstance(self.backend, _WebBackend):
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
            info = _instance_info(row)
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
        already = parse_already(query.already_fetched)
        plans = self.find_studies(query)
        for uid, skipped in sorted(self.skipped.items()):
            if uid not in query.already_fetched:
                yield skipped  # found, not taken: the transfer says so and why
        for plan in plans:
            if plan.uid in query.already_fetched:
                continue  # its manifest was produced: complete in an earlier run
            yield from self.retrieve_study(plan, query, already.get(plan.uid, {}))
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
        return _WebBackend(self.options)
