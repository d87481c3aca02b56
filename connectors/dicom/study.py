"""What a study should contain, what arrived, and the records a retrieve yields.

Shared by the DIMSE and DICOMweb connectors. A `StudyPlan` holds what the query said
(study and series attributes, announced instance counts, and the SOP Instance UIDs once
an instance-level query has listed them). `judge()` compares it with what a `Retrieval`
received and what earlier runs already fetched, naming every missing instance it can.
The study manifest (kind "dicom-study") is a small JSON record the ImagingStudy mapping
reads; instance records (kind "dicom") are the files themselves.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, replace
from datetime import date
from pathlib import Path

from connectors.base import (
    RawRecord,
    RecordQuery,
    RejectedRecord,
    SkippedRecord,
    SourceRejected,
    SourceUnavailable,
)
from connectors.data_classes import ALL, DICOM_CLASSES

from .intake import InstanceError, Received, Retrieval
from .uids import is_uid

IMAGING_CLASSES = frozenset({ALL, *DICOM_CLASSES})  # from the one table of data classes


def wants_imaging(query: RecordQuery) -> bool:
    return bool(IMAGING_CLASSES & set(query.data_classes))


def dicom_date(value: date | None) -> str:
    return value.strftime("%Y%m%d") if value else ""


def date_range(query: RecordQuery) -> str:
    """DICOM range matching for StudyDate ("" when the authorization sets no range)."""
    if not (query.date_from or query.date_to):
        return ""
    return f"{dicom_date(query.date_from)}-{dicom_date(query.date_to)}"


def in_range(study_date: str, query: RecordQuery) -> bool:
    """Re-check the date range locally: a PACS may ignore or mis-apply range matching."""
    if not (query.date_from or query.date_to):
        return True
    if len(study_date) < 8 or not study_date[:8].isdigit():
        return False
    value = study_date[:8]
    return (not query.date_from or value >= dicom_date(query.date_from)) and \
        (not query.date_to or value <= dicom_date(query.date_to))


@dataclass
class InstanceInfo:
    sop_instance_uid: str
    sop_class_uid: str = ""
    number: int | None = None
    frames: int | None = None
    syntaxes: list[str] = field(default_factory=list)  # transfer syntaxes held, if told


@dataclass
class SeriesPlan:
    uid: str
    modality: str = ""
    number: int | None = None
    description: str = ""
    body_part: str = ""
    laterality: str = ""
    started: str = ""  # SeriesDate + SeriesTime as given
    expected: int | None = None  # NumberOfSeriesRelatedInstances
    instances: dict[str, InstanceInfo] | None = None  # from an instance-level query


@dataclass
class StudyPlan:
    uid: str
    patient_id: str = ""
    patient_name: str = ""
    birth_date: str = ""
    date: str = ""
    time: str = ""
    accession: str = ""
    description: str = ""
    referrer: str = ""
    study_id: str = ""
    modalities: list[str] = field(default_factory=list)
    sop_classes: list[str] = field(default_factory=list)
    expected: int | None = None  # NumberOfStudyRelatedInstances
    series: dict[str, SeriesPlan] = field(default_factory=dict)


@dataclass
class StudyOutcome:
    """Completeness of one study after a retrieve."""

    study_uid: str
    expected: int | None
    received: int  # this run
    already: int  # earlier runs
    missing: list[str]  # SOP Instance UIDs known to be missing
    missing_unnamed: dict[str, int]  # series UID -> count missing but not yet named
    rejected: dict[str, str]  # SOP Instance UID -> why it is unacceptable (reported)
    move_failed: int = 0  # sub-operations the PACS itself reported failed

    @property
    def complete(self) -> bool:
        return not self.missing and not self.missing_unnamed


def parse_already(origins) -> dict[str, dict[str, set[str]]]:
    """study -> series -> SOP UIDs from the origins of instance records already fetched."""
    out: dict[str, dict[str, set[str]]] = {}
    for origin in origins:
        parts = str(origin).split("/")
        if len(parts) == 3 and all(is_uid(p) for p in parts):
            out.setdefault(parts[0], {}).setdefault(parts[1], set()).add(parts[2])
    return out


def judge(plan: StudyPlan, retrieval: Retrieval, already: dict[str, set[str]],
          move_failed: int = 0) -> StudyOutcome:
    """Missing = announced - received - fetched earlier - rejected for good (those are
    reported on their own: retrying cannot fix a malformed or foreign instance)."""
    received = {r.sop_instance_uid for r in retrieval.received_in(plan.uid)}
    rejected = {uid: e.reason for uid, e in list(retrieval.errors.items())
                if e.permanent and uid not in received
                and (not e.study_uid or e.study_uid == plan.uid)}
    have_total = 0
    missing: list[str] = []
    unnamed: dict[str, int] = {}
    for series in plan.series.values():
        got = {r.sop_instance_uid for r in retrieval.received_in(plan.uid, series.uid)}
        got |= already.get(series.uid, set())
        got |= {uid for uid, e in retrieval.errors.items()
                if e.permanent and e.series_uid == series.uid}
        have_total += len(got)
        if series.instances is not None:
            missing += sorted(set(series.instances) - got - set(rejected))
            # a listing shorter than the announced count (a C-MOVE takes only listed
            # instances): the rest cannot be named, but is not forgotten
            short = (series.expected or 0) - len(set(series.instances) | got)
            if short > 0:
                unnamed[series.uid] = short
        elif series.expected is not None and len(got) < series.expected:
            unnamed[series.uid] = series.expected - len(got)
    if plan.expected is not None and not plan.series and have_total < plan.expected:
        unnamed[""] = plan.expected - have_total
    return StudyOutcome(plan.uid, plan.expected, len(received),
                        sum(len(v) for v in already.values()), missing, unnamed, rejected,
                        move_failed)


class StudyIncomplete(SourceUnavailable):
    """Some instances did not arrive after the retries; `outcomes` says which.

    Transient: a later pull (with the records fetched so far as `already_fetched`)
    retrieves only what is missing."""

    def __init__(self, outcomes: list[StudyOutcome]):
        self.outcomes = outcomes
        parts = []
        for o in outcomes:
            named = f"{len(o.missing)} missing" if o.missing else ""
            unnamed = sum(o.missing_unnamed.values())
            text = ", ".join(x for x in (named, f"{unnamed} unaccounted" if unnamed else "",
                                         f"{len(o.rejected)} rejected" if o.rejected else "")
                             if x)
            parts.append(f"study {o.study_uid}: {text}")
        super().__init__("incomplete DICOM retrieve: " + "; ".join(parts))


#: SOP Instance UIDs named in one message at most (the rest are counted)
NAMED_IN_MESSAGE = 20


def _named(uids: list[str]) -> str:
    shown = ", ".join(uids[:NAMED_IN_MESSAGE])
    more = len(uids) - NAMED_IN_MESSAGE
    return shown + (f" and {more} more" if more > 0 else "")


class StudyNotSent(SourceRejected):
    """The PACS did not send some instances of a study, and pull after pull fetched
    nothing new: retrying will not help. Terminal; the message names what is missing
    and what an operator can do about it."""

    def __init__(self, source: str, outcomes: list[StudyOutcome], attempts: int):
        self.outcomes = outcomes
        parts = []
        for o in outcomes:
            unnamed = sum(o.missing_unnamed.values())
            total = len(o.missing) + unnamed
            text = f"study {o.study_uid}: {total} instance(s) not sent by the PACS"
            if o.missing:
                text += f" (SOP Instance UIDs {_named(sorted(o.missing))})"
            if unnamed:
                text += f"{' and' if o.missing else ''} {unnamed} it did not name"
            parts.append(text)
        super().__init__(
            "incomplete DICOM study: " + "; ".join(parts) + f"; {attempts} pull(s) in a row "
            "fetched nothing new. Have the PACS repair or re-send them, then retry the "
            f"source; or set allow_incomplete = true on source {source!r} to deliver the "
            "rest, with the missing instances reported")


def not_sent_records(source: str, plan: StudyPlan, outcome: StudyOutcome,
                     attempts: int) -> list[SkippedRecord]:
    """One SkippedRecord per instance the PACS never sent (per series where it did not
    name them), for a study delivered incomplete (`allow_incomplete`)."""
    series_of = {uid: s.uid for s in plan.series.values() for uid in (s.instances or ())}
    why = f"not sent by the PACS ({attempts} pull(s) in a row fetched nothing new)"
    out = [SkippedRecord(source, "/".join(x for x in (plan.uid, series_of.get(sop), sop) if x),
                         why) for sop in sorted(outcome.missing)]
    for series, n in sorted(outcome.missing_unnamed.items()):
        out.append(SkippedRecord(source, "/".join(x for x in (plan.uid, series) if x),
                                 f"{n} instance(s) {why}, not named by the PACS"))
    return out


def without_missing(plan: StudyPlan, outcome: StudyOutcome) -> StudyPlan:
    """The plan with the instances that never arrived left out (for the manifest)."""
    missing = set(outcome.missing)
    series = {uid: replace(s, instances=None if s.instances is None else {
        k: v for k, v in s.instances.items() if k not in missing})
        for uid, s in plan.series.items()}
    return replace(plan, series=series)


def rejected_record(source: str, e: InstanceError) -> RejectedRecord:
    """A per-instance error as the gateway reports it (UIDs are validated or empty)."""
    origin = "/".join(x for x in (e.study_uid, e.series_uid, e.sop_instance_uid) if x) \
        or "dicom instance (unnamed)"
    return RejectedRecord(source=source, origin=origin, reason=f"{e.via}: {e.reason}")


def instance_record(source: str, r: Received) -> RawRecord:
    return RawRecord(
        source=source, kind="dicom", media_type="application/dicom",
        path=Path(r.location), sha256=r.sha256, size=r.size,
        origin=f"{r.study_uid}/{r.series_uid}/{r.sop_instance_uid}",
        metadata={"study_uid": r.study_uid, "series_uid": r.series_uid,
                  "sop_instance_uid": r.sop_instance_uid, "sop_class_uid": r.sop_class_uid,
                  "transfer_syntax": r.transfer_syntax, "via": r.via,
                  "location": str(r.location)})


def manifest_record(source: str, workdir: Path, plan: StudyPlan, received: list[Received],
                    outcome: StudyOutcome, endpoint: dict) -> RawRecord:
    """The study manifest: what the ImagingStudy mapping needs, as a small JSON file."""
    series_out = {}
    for s in plan.series.values():
        entry = asdict(s)
        entry["instances"] = {uid: asdict(i) for uid, i in (s.instances or {}).items()}
        series_out[s.uid] = entry
    for r in received:  # headers fill in what the queries did not return
        h = r.header
        s = series_out.setdefault(r.series_uid, asdict(SeriesPlan(r.series_uid)))
        s["instances"] = s.get("instances") or {}
        for key, value in (("modality", h.get("Modality")), ("number", h.get("SeriesNumber")),
                           ("description", h.get("SeriesDescription")),
                           ("body_part", h.get("BodyPartExamined")),
                           ("laterality", h.get("Laterality"))):
            if value not in (None, "") and s.get(key) in (None, ""):
                s[key] = value
        s["instances"][r.sop_instance_uid] = {
            "sop_instance_uid": r.sop_instance_uid, "sop_class_uid": r.sop_class_uid,
            "number": h.get("InstanceNumber"), "frames": h.get("NumberOfFrames"),
            "sha256": r.sha256, "size": r.size}
    study = asdict(plan)
    study.pop("series")
    if received:
        h = received[0].header
        for key, attr in (("date", "StudyDate"), ("time", "StudyTime"),
                          ("accession", "AccessionNumber"), ("description", "StudyDescription"),
                          ("referrer", "ReferringPhysicianName"), ("study_id", "StudyID"),
                          ("patient_id", "PatientID"), ("patient_name", "PatientName"),
                          ("birth_date", "PatientBirthDate")):
            if not study.get(key) and h.get(attr):
                study[key] = h[attr]
    doc = {"version": 1, "source": source, "endpoint": endpoint, "study": study,
           "series": list(series_out.values()),
           "complete": outcome.complete, "expected": outcome.expected,
           "missing": outcome.missing}
    body = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
    digest = hashlib.sha256(body).hexdigest()
    workdir.mkdir(parents=True, exist_ok=True)
    path = workdir / f"study-{digest}.json"
    path.write_bytes(body)
    return RawRecord(source=source, kind="dicom-study", media_type="application/json",
                     path=path, sha256=digest, size=len(body), origin=plan.uid,
                     metadata={"study_uid": plan.uid, "complete": outcome.complete,
                               "instances": outcome.received + outcome.already})
