"""DICOM query/retrieve over DIMSE: C-ECHO, C-FIND, C-MOVE and C-GET with pynetdicom.

`QueryRetrieveSCU` speaks the protocol (Study Root information model). Retrieves run
without DIMSE or network timeouts, which a study of thousands of instances would hit, and
are watched instead: a retrieve during which neither a response nor an instance arrives
for `stall_timeout` seconds is aborted. `DicomConnector` (connectors.dicom.connector)
builds the study-by-study retrieve with completeness checks on top of it.
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import _config, build_role, evt
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelFind as FIND
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelGet as GET
from pynetdicom.sop_class import StudyRootQueryRetrieveInformationModelMove as MOVE
from pynetdicom.sop_class import Verification
from pynetdicom.status import code_to_category

from connectors.base import SourceRejected, SourceUnavailable

from .intake import Retrieval
from .net import FastAE, check_version
from .scp import (
    ACCEPTED_SYNTAXES,
    COMMON_SYNTAXES,
    EXPLICIT_LE,
    IMPLICIT_LE,
    STORAGE_SOP_CLASSES,
    store_begin,
    store_handler,
)
from .uids import clean_uid, describe

LOGGER = logging.getLogger(__name__)
# pynetdicom logs the identifiers of every query and answer (names, IDs, birth dates):
# records never go to logs, whatever level pynetdicom's logger is given
_config.LOG_REQUEST_IDENTIFIERS = False
_config.LOG_RESPONSE_IDENTIFIERS = False

#: storage SOP classes proposed for C-GET when the PACS does not say what a study holds
COMMON_STORAGE_CLASSES = [
    "1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1",  # CT, Enhanced CT
    "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.4.1",  # MR, Enhanced MR
    "1.2.840.10008.5.1.4.1.1.1", "1.2.840.10008.5.1.4.1.1.1.1",  # CR, DX presentation
    "1.2.840.10008.5.1.4.1.1.1.1.1", "1.2.840.10008.5.1.4.1.1.1.2",  # DX proc, MG pres
    "1.2.840.10008.5.1.4.1.1.1.2.1", "1.2.840.10008.5.1.4.1.1.13.1.3",  # MG proc, BTO
    "1.2.840.10008.5.1.4.1.1.6.1", "1.2.840.10008.5.1.4.1.1.3.1",  # US, US multi-frame
    "1.2.840.10008.5.1.4.1.1.20", "1.2.840.10008.5.1.4.1.1.128",  # NM, PET
    "1.2.840.10008.5.1.4.1.1.130", "1.2.840.10008.5.1.4.1.1.12.1",  # Enh PET, XA
    "1.2.840.10008.5.1.4.1.1.12.2", "1.2.840.10008.5.1.4.1.1.7",  # RF, SC
    "1.2.840.10008.5.1.4.1.1.7.1", "1.2.840.10008.5.1.4.1.1.7.2",  # MF SC
    "1.2.840.10008.5.1.4.1.1.7.3", "1.2.840.10008.5.1.4.1.1.7.4",
    "1.2.840.10008.5.1.4.1.1.88.11", "1.2.840.10008.5.1.4.1.1.88.22",  # SR
    "1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.88.59",  # SR, KOS
    "1.2.840.10008.5.1.4.1.1.104.1", "1.2.840.10008.5.1.4.1.1.11.1",  # PDF, GSPS
    "1.2.840.10008.5.1.4.1.1.481.1", "1.2.840.10008.5.1.4.1.1.481.3",  # RT image, struct
    "1.2.840.10008.5.1.4.1.1.481.2", "1.2.840.10008.5.1.4.1.1.481.5",  # RT dose, plan
    "1.2.840.10008.5.1.4.1.1.77.1.4", "1.2.840.10008.5.1.4.1.1.77.1.1",  # VL photo, endo
    "1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66",  # SEG, raw
]

STUDY_KEYS = ("StudyInstanceUID", "StudyDate", "StudyTime", "AccessionNumber",
              "StudyDescription", "ReferringPhysicianName", "StudyID", "PatientID",
              "PatientName", "PatientBirthDate", "ModalitiesInStudy", "SOPClassesInStudy",
              "NumberOfStudyRelatedSeries", "NumberOfStudyRelatedInstances")
SERIES_KEYS = ("SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription",
               "BodyPartExamined", "Laterality", "SeriesDate", "SeriesTime",
               "NumberOfSeriesRelatedInstances")
IMAGE_KEYS = ("SOPInstanceUID", "SOPClassUID", "InstanceNumber", "NumberOfFrames",
              "AvailableTransferSyntaxUID")


@dataclass(frozen=True)
class DimsePeer:
    host: str
    port: int
    ae_title: str  # the PACS's AE title (called)
    calling_aet: str  # ours, as the PACS knows it


@dataclass
class RetrieveStatus:
    """Final status of a C-MOVE or C-GET with its sub-operation counts."""

    status: int | None  # None: no final response (aborted, stalled, connection lost)
    completed: int = 0
    failed: int = 0
    warning: int = 0
    remaining: int = 0
    failed_sops: list[str] = field(default_factory=list)
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.status is not None and code_to_category(self.status) in (
            "Success", "Warning")


def _cx(sop_class):
    """A query/retrieve context proposing Explicit VR Little Endian first."""
    return build_context(sop_class, [EXPLICIT_LE, IMPLICIT_LE])


def _keys(ds: Dataset, names) -> dict:
    out = {}
    for name in names:
        if name in ds:
            value = ds[name].value
            if value is None:
                continue
            if ds[name].VM > 1 or isinstance(value, (list, tuple)):
                out[name] = [str(v) for v in value]
            elif ds[name].VR in ("IS", "US", "UL", "SL", "SS"):
                try:
                    out[name] = int(value)
                except (TypeError, ValueError):
                    pass
            else:
                out[name] = str(value)
    return out


class _Watchdog:
    """Aborts an association when a retrieve makes no progress: nothing at all (no
    response, no instance) for `start` seconds after the request, or nothing new for
    `stall` seconds once it has started. Progress is a response or an instance received
    for the retrieval, so a long retrieve never times out while data flows."""

    def __init__(self, assoc, retrieval: Retrieval | None, stall: float, start: float):
        self.assoc, self.retrieval, self.stall, self.start = assoc, retrieval, stall, start
        self.began = self.last = time.monotonic()
        self.seen = retrieval.last_activity if retrieval else 0.0
        self.fired = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="dicom-watchdog")

    def poke(self) -> None:
        self.last = time.monotonic()

    def _run(self) -> None:
        while not self._stop.wait(min(1.0, self.start / 4, self.stall / 4)):
            activity = self.retrieval.last_activity if self.retrieval else 0.0
            last = max(self.last, activity)
            started = self.last > self.began or activity > self.seen
            limit = self.stall if started else self.start
            if time.monotonic() - last > limit:
                self.fired = True
                LOGGER.warning("retrieve made no progress for %.0f s: aborting", limit)
                self.assoc.abort()
                # a local abort leaves the C-GET/C-MOVE response wait blocked on its
                # queue (no DIMSE timeout, on purpose): "no response" ends it
                self.assoc.dimse.msg_queue.put((None, None))
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()


class QueryRetrieveSCU:
    """C-ECHO/C-FIND/C-MOVE/C-GET against one PACS (Study Root model)."""

    def __init__(self, peer: DimsePeer, *, acse_timeout: float = 30,
                 connect_timeout: float = 15, find_timeout: float = 120,
                 stall_timeout: float = 900, start_timeout: float = 120, max_pdu: int = 0):
        check_version()
        self.peer = peer
        self.acse_timeout = acse_timeout
        self.connect_timeout = connect_timeout
        self.find_timeout = find_timeout
        self.stall_timeout = stall_timeout
        self.start_timeout = start_timeout
        self.max_pdu = max_pdu

    def _ae(self) -> FastAE:
        ae = FastAE(ae_title=self.peer.calling_aet)
        ae.acse_timeout = self.acse_timeout
        ae.connection_timeout = self.connect_timeout
        ae.network_timeout = None
        ae.dimse_timeout = None
        return ae

    def _associate(self, contexts, ext_neg=None, handlers=None, dimse_timeout=None):
        ae = self._ae()
        ae.dimse_timeout = dimse_timeout
        try:
            assoc = ae.associate(self.peer.host, self.peer.port, contexts=contexts,
                                 ae_title=self.peer.ae_title, max_pdu=self.max_pdu,
                                 ext_neg=ext_neg, evt_handlers=handlers)
        except OSError as exc:
            raise SourceUnavailable(f"cannot reach PACS {self.peer.ae_title}: {exc}") from None
        if assoc.is_established:
            return assoc
        if assoc.is_rejected:
            raise SourceRejected(f"PACS {self.peer.ae_title} rejected the association "
                                 f"from {self.peer.calling_aet}")
        raise SourceUnavailable(f"PACS {self.peer.ae_title} at {self.peer.host}:"
                                f"{self.peer.port} did not accept an association")

    # -- C-ECHO ----------------------------------------------------------------------------
    def echo(self) -> None:
        assoc = self._associate([_cx(Verification)], dimse_timeout=30)
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if not status or status.Status != 0x0000:
            raise SourceUnavailable(f"C-ECHO to {self.peer.ae_title} failed")

    # -- C-FIND ----------------------------------------------------------------------------
    def find(self, level: str, match: dict, returns) -> list[dict]:
        """C-FIND at `level` ("STUDY", "SERIES", "IMAGE"); `match` keys must be set
        values, `returns` are requested empty. Results are dicts of the asked keys."""
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        for name in returns:
            setattr(ds, name, "")
        for name, value in match.items():
            setattr(ds, name, value)
        assoc = self._associate([_cx(FIND)], dimse_timeout=self.find_timeout)
        results = []
        try:
            for status, identifier in assoc.send_c_find(ds, FIND):
                if status is None or "Status" not in status:
                    raise SourceUnavailable(f"C-FIND at {level} level: no response from "
                                            f"{self.peer.ae_title}")
                category = code_to_category(status.Status)
                if category == "Pending" and identifier is not None:
                    results.append(_keys(identifier, returns))
                elif category in ("Failure", "Cancel"):
                    raise SourceRejected(f"C-FIND at {level} level failed with status "
                                         f"0x{status.Status:04X}")
        finally:
            if assoc.is_established:
                assoc.release()
        return results

    # -- C-MOVE / C-GET ----------------------------------------------------------------------
    @staticmethod
    def _identifier(level: str, study: str, series=None, sops=None) -> Dataset:
        ds = Dataset()
        ds.QueryRetrieveLevel = level
        ds.StudyInstanceUID = study
        if series is not None:
            ds.SeriesInstanceUID = series
        if sops is not None:
            ds.SOPInstanceUID = list(sops) if len(sops) > 1 else sops[0]
        return ds

    @staticmethod
    def _final(responses, watchdog: _Watchdog, on_response=None) -> RetrieveStatus:
        last = None
        for status, identifier in responses:
            watchdog.poke()
            if on_response is not None:
                on_response()
            if status is None or "Status" not in status:
                break
            last = (status, identifier)
            if code_to_category(status.Status) != "Pending":
                break
        if last is None or code_to_category(last[0].Status) == "Pending":
            reason = "stalled and aborted" if watchdog.fired else \
                "association ended without a final response"
            return RetrieveStatus(None, reason=reason)
        status, identifier = last
        failed = []
        if identifier is not None and "FailedSOPInstanceUIDList" in identifier:
            value = identifier.FailedSOPInstanceUIDList
            values = value if isinstance(value, (list, tuple)) or hasattr(
                value, "__iter__") and not isinstance(value, str) else [value]
            failed = [u for u in (clean_uid(v) for v in values) if u]
        return RetrieveStatus(
            status.Status, int(status.get("NumberOfCompletedSuboperations", 0) or 0),
            int(status.get("NumberOfFailedSuboperations", 0) or 0),
            int(status.get("NumberOfWarningSuboperations", 0) or 0),
            int(status.get("NumberOfRemainingSuboperations", 0) or 0), failed)

    def move(self, identifier: Dataset, destination: str, msg_id: int,
             retrieval: Retrieval | None = None, on_response=None) -> RetrieveStatus:
        """C-MOVE `identifier` to AE `destination`, sent with message ID `msg_id`."""
        assoc = self._associate([_cx(MOVE)])
        try:
            with _Watchdog(assoc, retrieval, self.stall_timeout, self.start_timeout) as dog:
                return self._final(assoc.send_c_move(identifier, destination, MOVE,
                                                     msg_id=msg_id), dog, on_response)
        finally:
            if assoc.is_established:
                assoc.release()

    def get(self, identifier: Dataset, retrieval: Retrieval, sop_classes=None,
            syntaxes=None) -> RetrieveStatus:
        """C-GET `identifier` on one association; instances go to `retrieval`.

        Each (SOP class, transfer syntax) pair is proposed in a presentation context of
        its own (see `get_contexts`), so the PACS finds one accepting the syntax it holds
        an instance in and sends it as it is, instead of converting it to the one syntax
        it picked for a context listing many. `sop_classes` x `syntaxes` must fit one
        association (`fits`); without them, the common storage classes are proposed with
        every syntax in one context each (the PACS may then convert)."""
        contexts, roles = get_contexts(sop_classes, syntaxes)
        handler = store_handler(lambda event: retrieval, "c-get")
        assoc = self._associate(contexts, ext_neg=roles,
                                handlers=[(evt.EVT_C_STORE, handler)])
        assoc.store_begin = store_begin(lambda a, command: retrieval, "c-get")
        assoc.on_partial = lambda a, command: retrieval.error(
            clean_uid(command.get("AffectedSOPInstanceUID")) or "",
            "association ended while this instance was being received", "c-get",
            permanent=False)
        try:
            with _Watchdog(assoc, retrieval, self.stall_timeout, self.start_timeout) as dog:
                return self._final(assoc.send_c_get(identifier, GET), dog)
        finally:
            if assoc.is_established:
                assoc.release()


#: pynetdicom proposes at most 128 presentation contexts; one is the C-GET's own
MAX_STORAGE_CONTEXTS = 127


def storage_classes(values) -> list[str]:
    """The storage SOP classes among `values`, each once, in order."""
    return list(dict.fromkeys(c for c in values if c in STORAGE_SOP_CLASSES))


def fits(sop_classes, syntaxes=None) -> int:
    """How many SOP classes one C-GET association can take with `syntaxes` each."""
    return max(1, MAX_STORAGE_CONTEXTS // len(syntaxes or COMMON_SYNTAXES))


def get_contexts(sop_classes=None, syntaxes=None) -> tuple[list, list]:
    """Presentation contexts and SCP/SCU role selections for a C-GET: one context per
    (storage SOP class, transfer syntax), each class with the SCP role for C-STORE."""
    classes = storage_classes(sop_classes or ())
    syntaxes = list(dict.fromkeys(syntaxes or COMMON_SYNTAXES))
    if not classes:
        # the PACS did not say what the study holds: the common classes, every syntax
        # in one context each (the PACS may convert what it holds in another)
        classes = storage_classes(COMMON_STORAGE_CLASSES)
        contexts = [build_context(c, ACCEPTED_SYNTAXES) for c in classes]
    else:
        if len(classes) * len(syntaxes) > MAX_STORAGE_CONTEXTS:
            raise ValueError(f"{len(classes)} SOP classes x {len(syntaxes)} transfer "
                             f"syntaxes do not fit one association")
        contexts = [build_context(c, [ts]) for c in classes for ts in syntaxes]
    return [_cx(GET)] + contexts, [build_role(c, scp_role=True) for c in classes]


def check_level_uids(values, what: str) -> list[str]:
    """Valid UIDs from a query answer; invalid ones are logged (bounded) and dropped."""
    out = []
    for value in values:
        uid = clean_uid(value)
        if uid is None:
            LOGGER.warning("ignoring %s with an invalid UID %s", what, describe(value))
        else:
            out.append(uid)
    return out
