"""What a received bundle may carry under its Consent: every record of a data class the
Consent allows (`provision.class`) and, when the Consent limits dates
(`provision.dataPeriod`), dated inside that period.

Each record is classed and dated as the sender filters it: mappings/fhir/classify.py
(`data_class`, `clinical_date`) under the one rule, connectors/data_classes.py `covers`
("supporting" resources go with the records that cite them, whatever the classes and
dates). What is not a record passes: the Consent's Patient, the Consent itself and the
bundle's own entries (gateway/exchange/structure.py: the SubmissionSet, the patient
summary, the completeness manifest). A Binary says nothing of itself: it is covered by a
record or own document that points at it, and is otherwise classed as the table classes
it (a document, undated).
"""
from __future__ import annotations

from datetime import date

from connectors.data_classes import DATA_CLASS_SYSTEM, covers
from gateway.errors import InvalidInput
from gateway.exchange.structure import own_kind
from mappings.fhir.classify import clinical_date, data_class


class OutsideConsent(InvalidInput):
    """A record in the bundle is of a data class, or dated, outside what its Consent allows."""
    http_status = 422
    code = "business-rule"


def _day(value, last: bool) -> date | None:
    """A dataPeriod bound as a day ("2020" and "2020-03" widen to the whole year or month)."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    try:
        if len(value) == 4:
            return date(int(value), 12, 31) if last else date(int(value), 1, 1)
        if len(value) == 7:
            first = date(int(value[:4]), int(value[5:7]), 1)
            if not last:
                return first
            following = date(first.year + first.month // 12, first.month % 12 + 1, 1)
            return date.fromordinal(following.toordinal() - 1)
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def terms(consent: dict) -> tuple[set[str], date | None, date | None]:
    """The data classes and the data period (inclusive, either end open) a Consent allows."""
    prov = consent.get("provision") or {}
    classes = {c.get("code") for c in prov.get("class") or []
               if isinstance(c, dict) and c.get("system") == DATA_CLASS_SYSTEM}
    period = prov.get("dataPeriod") or {}
    start, end = _day(period.get("start"), False), _day(period.get("end"), True)
    if (period.get("start") and start is None) or (period.get("end") and end is None):
        raise OutsideConsent("the Consent's provision.dataPeriod cannot be read as dates; "
                             "the sender must send a Consent with full dates")
    return classes, start, end


def _pointed_at(node, out: set[str]) -> None:
    """Every reference and attachment url inside a resource."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("reference", "url") and isinstance(value, str):
                out.add(value)
            elif isinstance(value, (dict, list)):
                _pointed_at(value, out)
    elif isinstance(node, list):
        for value in node:
            _pointed_at(value, out)


def _where(n: int, entry: dict) -> str:
    return f"entry {n} ({entry['resource'].get('resourceType')} {str(entry.get('fullUrl'))[:100]})"


def _check_record(n: int, entry: dict, classes, start, end) -> str:
    """The record's data class, if the Consent covers it; else OutsideConsent naming the
    entry and what is outside (never the record's values)."""
    resource = entry["resource"]
    klass, day = data_class(resource), clinical_date(resource)
    if covers(classes, start, end, klass, day):
        return klass
    if covers(classes, None, None, klass, day):
        why = ("has no clinical date, and the Consent limits the dates released" if day is None
               else "is dated outside the Consent's data period")
        raise OutsideConsent(f"{_where(n, entry)} of data class {klass!r} {why}; nothing stored")
    raise OutsideConsent(f"{_where(n, entry)} is of data class {klass!r}, which the Consent "
                         f"does not allow; nothing stored")


def check(data: dict, consent: dict) -> None:
    """Refuse the whole bundle (OutsideConsent) unless every record in it is covered by the
    Consent's data classes and data period."""
    classes, start, end = terms(consent)
    patient = (consent.get("patient") or {}).get("reference")
    vouched: set[str] = set()  # what records and own documents point at
    own: set[tuple[str, str]] = set()
    binaries = []
    records = []  # what may vouch for a Binary: walked only while one is not vouched for
    for n, entry in enumerate(data.get("entry") or []):
        resource = entry["resource"]
        rtype = resource.get("resourceType")
        if resource is consent or (rtype == "Patient" and entry["fullUrl"] == patient):
            continue
        kind = own_kind(resource)
        if kind is not None:
            if (rtype, kind) in own:  # one of each a bundle: the mark is no way around the check
                raise OutsideConsent(f"{_where(n, entry)} is a second {kind!r} {rtype}; a bundle "
                                     f"carries one; nothing stored")
            own.add((rtype, kind))
            if rtype == "DocumentReference":
                _pointed_at(resource.get("content"), vouched)
            continue
        if rtype == "Binary":
            binaries.append((n, entry))
            continue
        if _check_record(n, entry, classes, start, end) != "supporting":
            records.append(resource)
    unvouched = {entry["fullUrl"] for _, entry in binaries} - vouched
    # the types that hold documents first: once every Binary is vouched for, the rest of
    # the records need no walk (thousands of them in a FHIR source's bundle)
    records.sort(key=lambda r: r.get("resourceType") not in DOCUMENT_HOLDERS)
    for resource in records:
        if not unvouched:
            break
        found: set[str] = set()
        _pointed_at(resource, found)
        unvouched -= found
    for n, entry in binaries:
        if entry["fullUrl"] in unvouched:
            _check_record(n, entry, classes, start, end)


# resources whose attachments usually point at a bundle's Binaries (any record may)
DOCUMENT_HOLDERS = frozenset({"DocumentReference", "DiagnosticReport", "Media"})
