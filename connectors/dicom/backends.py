"""Where the imaging connectors' studies come from: a PACS over DIMSE or DICOMweb.

`DimseBackend` speaks C-FIND, and C-MOVE (into our Storage SCP, one per AE title and port
in this process, shared by every transfer: `acquire_scp`) or C-GET. A C-GET proposes each
(SOP class, transfer syntax) pair in a presentation context of its own, so the PACS sends
each instance in the syntax it holds: the study's SOP classes from C-FIND with every
syntax we take when they fit one association (128 contexts at most), else the common
syntaxes, else the instances grouped by SOP class from an instance-level query (with the
syntaxes it says they are held in, where it does), one C-GET per group. `WebBackend`
speaks QIDO-RS and WADO-RS. connectors.dicom.connector builds the study-by-study
retrieve on either.
"""
from __future__ import annotations

import logging
import threading

from connectors.base import SourceRejected, SourceUnavailable

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
from .scp import ACCEPTED_SYNTAXES, EXPLICIT_LE, SourcePeer, StorageSCP, source_peer
from .study import InstanceInfo
from .uids import clean_uid
from .web import DicomWebClient

LOGGER = logging.getLogger(__name__)

# One Storage SCP per (AE title, host, port) in this process, shared by every transfer.
_scps: dict[tuple, list] = {}
_scps_lock = threading.Lock()


def acquire_scp(ae_title: str, port: int, host: str = "127.0.0.1",
                on_refused=None) -> StorageSCP:
    """The process's SCP for (AE title, host, port), started on first use; `on_refused`
    (the same for every source of a process: the gateway's audit) if it has none yet."""
    with _scps_lock:
        entry = _scps.get((ae_title, host, port))
        if entry is None:
            entry = _scps[(ae_title, host, port)] = [StorageSCP(ae_title, port, host).start(), 0]
        entry[1] += 1
        if entry[0].on_refused is None:
            entry[0].on_refused = on_refused
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


def sender_peer(options: dict) -> SourcePeer:
    """Who a PACS's C-STOREs come from: its AE title (`sender_aet`, default `ae_title`)
    and addresses (`sender_hosts`, default `host`), resolved now."""
    hosts = options.get("sender_hosts") or [options["host"]]
    hosts = [hosts] if isinstance(hosts, str) else list(hosts)
    try:
        return source_peer(str(options.get("sender_aet") or options["ae_title"]), hosts)
    except ValueError as exc:
        raise SourceUnavailable(str(exc)) from None


def _text(value) -> str:
    return "" if value is None else str(value)


def instance_info(row: dict) -> InstanceInfo | None:
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


class DimseBackend:
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
        self.moves = options.get("moves")  # open C-MOVEs kept by a standing receiver
        if self.method == "move" and self.moves is not None:
            # the C-MOVE destination is a receiver elsewhere (scp_aet): no port here
            self.peer = self._sender(options)
        elif self.method == "move":
            if options.get("scp_port") is None:
                raise SourceRejected("retrieve = move needs scp_port (our Storage SCP)")
            self.peer = self._sender(options)
            try:
                self.scp = acquire_scp(self.move_dest, int(options["scp_port"]),
                                       options.get("scp_host", "127.0.0.1"),
                                       options.get("on_refused"))
            except OSError as exc:  # e.g. another worker process holds the port
                raise SourceUnavailable(f"cannot listen for C-MOVE on port "
                                        f"{options['scp_port']}: {exc.strerror}") from None
            self.scp.admit(self.peer)
        self.uid_lists = True  # does the PACS accept UID lists in C-MOVE/C-GET?

    @staticmethod
    def _sender(options: dict) -> SourcePeer:
        return sender_peer(options)

    def close(self):
        if self.scp is not None:
            self.scp.withdraw(self.peer)
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
        expected = set(sops) if sops else self._listed(plan, series)
        if not expected:
            if series in plan.series:
                plan.series[series].instances = None  # judged by the announced count
            return RetrieveStatus(None, reason="the PACS lists no instance of it at IMAGE "
                                  "level, and a C-MOVE takes only listed ones (scp.py); "
                                  "retrieve = get does not need the list")
        moves = self.moves or self.scp
        with moves.expect(retrieval, self.peer, expected, self.scu.peer.calling_aet) \
                as move_id:
            status = self.scu.move(ident, self.move_dest, move_id, retrieval,
                                   on_response=lambda: moves.on_response(move_id))
            moves.settle(move_id, status)
        if not status.ok and status.completed == 0:
            # nothing came: a receiver that is down is a reason to try later, not a
            # sign the PACS refuses UID lists (retrieve() then moves one at a time)
            moves.check()
        return status

    def _listed(self, plan, series) -> set[str]:
        """SOP Instance UIDs the instance-level query lists for a series (or, without
        series, the study): the only instances a C-MOVE of it may bring (scp.py)."""
        if series is not None:
            return set(self._infos(plan, series, None))
        found = (instance_info(row) for row in self.scu.find(
            "IMAGE", {"StudyInstanceUID": plan.uid}, IMAGE_KEYS))
        return {i.sop_instance_uid for i in found if i is not None}

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
                info = instance_info(row)
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
                # refused with nothing sent: the PACS takes no UID list, so one at a time
                # (an association aborted or stalled says nothing of that: the study's
                # retry asks again for what is missing, and only that)
                if (len(sops) > 1 and status.status is not None and not status.ok
                        and status.completed == 0):
                    self.uid_lists = False
                    status = None
            if status is None:
                failed = 0
                have = {r.sop_instance_uid for r in retrieval.received_in(plan.uid, series)}
                for sop in (sop for sop in sops if sop not in have):
                    s = self._one("IMAGE", plan.uid, series, [sop], retrieval, plan)
                    failed += s.failed + (0 if s.ok else 1)
                return failed
        if status.status is None:
            LOGGER.warning("retrieve of %s %s: %s", level, series or plan.uid, status.reason)
        return status.failed


class WebBackend:
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
