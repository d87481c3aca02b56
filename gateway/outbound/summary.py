"""The patient summary a receiving clinician reads first: a Composition with one
section per data class (entries listed by clinical date), and the same summary
rendered as a PDF DocumentReference. Both deterministic for a transfer."""
from __future__ import annotations

import base64
import hashlib
import html
import io
import json

from fhir.resources.R4B.composition import Composition
from fhir.resources.R4B.documentreference import DocumentReference

from connectors.data_classes import DATA_CLASS_SYSTEM
from gateway.exchange.structure import SUMMARY_TYPE

from .units import Unit

CLASS_TITLES = {"notes": "Clinical notes", "labs": "Laboratory results", "pathology": "Pathology",
                "radiology": "Radiology", "imaging": "Imaging studies", "medications": "Medications",
                "problems": "Problems", "allergies": "Allergies", "documents": "Documents"}


def describe(resource: dict) -> str:
    """A short human title for a resource (no identifiers)."""
    for path in (("type", "coding", 0, "display"), ("code", "text"), ("code", "coding", 0, "display"),
                 ("type", "text"), ("description",)):
        value = resource
        try:
            for step in path:
                value = value[step]
        except (KeyError, IndexError, TypeError):
            continue
        if isinstance(value, str) and value:
            return value[:120]
    return resource["resourceType"]


def reference_to(unit, part_of: dict, resource: dict) -> dict:
    """A reference that resolves inside the first bundle, or by identifier across parts."""
    if part_of.get(unit.full_url, 1) == 1:
        return {"reference": unit.full_url, "display": describe(resource)}
    ident = resource.get("masterIdentifier") or (resource.get("identifier") or [None])[0]
    ref = {"display": describe(resource)}
    if ident:
        ref["identifier"] = {"system": ident.get("system"), "value": ident.get("value")}
    return ref


def _probes(refs: list[dict]) -> list[dict]:
    """What the Composition model checks of a section's entries: each reference by
    identifier (another part's), and one reference to an entry of this bundle per distinct
    display. The others differ from theirs only in the url, the bundle's own fullUrl: the
    model writes them as it writes that one (see `_written`). (The model over thousands of
    references took ~0.2 s of the standard case's assembly.)"""
    seen: set[str] = set()
    probes = []
    for ref in refs:
        if "reference" not in ref:
            probes.append(ref)
        elif ref["display"] not in seen:
            seen.add(ref["display"])
            probes.append(ref)
    return probes


def _written(refs: list[dict], written_probes: list[dict]) -> list[dict]:
    """A section's entries as the model writes them, from what it wrote of `_probes(refs)`."""
    probes = iter(written_probes)
    displays: dict[str, str] = {}
    out = []
    for ref in refs:
        if "reference" not in ref:
            out.append(next(probes))
            continue
        if ref["display"] not in displays:
            displays[ref["display"]] = next(probes)["display"]
        out.append({"reference": ref["reference"], "display": displays[ref["display"]]})
    return out


def _sections(units) -> dict[str, list]:
    sections: dict[str, list] = {}
    for unit in units:
        if not unit.entries or not isinstance(unit.entries[0], dict):
            continue  # a FHIR source's Binary: listed through what references it
        sections.setdefault(unit.data_class or "documents", []).append(unit)
    return sections


QUESTIONS_CODE = {"system": "urn:records-gateway:summary-section", "code": "patient-questions",
                  "display": "Patient's questions"}
MAX_QUESTIONS = 4000  # characters; the center's form takes no more


def questions(claims: dict) -> str | None:
    """The patient's questions the authorization carries (a center's intake puts them
    there), so the second-opinion doctor reads them before the records."""
    text = claims.get("questions")
    return text.strip()[:MAX_QUESTIONS] if isinstance(text, str) and text.strip() else None


def _wrap(text: str, width: int = 100) -> list[str]:
    import textwrap

    return [line for para in text.splitlines() for line in (textwrap.wrap(para, width) or [""])]


def _questions_section(text: str) -> dict:
    paras = "".join(f"<p>{html.escape(p)}</p>" for p in text.splitlines() if p.strip())
    return {"title": "Patient's questions", "code": {"coding": [QUESTIONS_CODE]},
            "text": {"status": "additional",
                     "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{paras}</div>'}}


def _pdf(title: str, patient: dict, sections: dict[str, list], when: str,
         asked: str | None = None) -> bytes:
    from reportlab.lib.pagesizes import letter
    from reportlab.pdfgen import canvas

    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=letter, invariant=1)
    c.setTitle(title)
    y = 720

    def line(text: str, font: str = "Helvetica", size: int = 10) -> None:
        nonlocal y
        if y < 72:
            c.showPage()
            y = 720
        c.setFont(font, size)
        c.drawString(72, y, text[:110])
        y -= size + 6

    line(title, "Helvetica-Bold", 16)
    name = patient["name"]
    line(f"Patient: {' '.join(name.get('given', []))} {name['family']}  born {patient['birthDate']}")
    line(f"Assembled {when[:10]}")
    if asked:
        line("Patient's questions", "Helvetica-Bold", 12)
        for text in _wrap(asked):
            line(text)
    for cls, units in sections.items():
        line(CLASS_TITLES.get(cls, cls.title()), "Helvetica-Bold", 12)
        for unit in units:
            line(f"{unit.date or 'undated'}   {describe(unit.entries[0]['resource'])}")
    c.showPage()
    c.save()
    return buf.getvalue()


def build(svc, t, shape, units, part_of, patient_url, claims, urn) -> list:

    when = t.created_at.isoformat()
    sections = _sections(units)
    title = "Patient summary for a second opinion"
    section_models = []
    references = []  # each section's entries
    for cls, members in sections.items():
        rows = "".join(f"<li>{html.escape(u.date or 'undated')}: "
                       f"{html.escape(describe(u.entries[0]['resource']))}</li>" for u in members)
        references.append([reference_to(u, part_of, u.entries[0]["resource"]) for u in members])
        section_models.append({
            "title": CLASS_TITLES.get(cls, cls.title()),
            "code": {"coding": [{"system": DATA_CLASS_SYSTEM, "code": cls}]},
            "text": {"status": "generated",
                     "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><ul>{rows}</ul></div>'},
            "entry": _probes(references[-1])})
    asked = questions(claims)
    if asked:  # first: the doctor reads what the patient wants answered before the records
        section_models.insert(0, _questions_section(asked))
        references.insert(0, None)
    composition = json.loads(Composition.model_validate({
        "resourceType": "Composition", "status": "final", "type": {"coding": [SUMMARY_TYPE]},
        "subject": {"reference": patient_url}, "date": when, "title": title,
        "author": [{"display": svc.settings.organization}],
        "section": section_models if sections else section_models + [{
            "title": "No records", "emptyReason": {"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/list-empty-reason",
                "code": "nilknown"}]}}],
    }).model_dump_json())
    for section, refs in zip(composition["section"], references):
        if refs is not None:
            section["entry"] = _written(refs, section["entry"])
    comp_url = urn(t.id, "composition")
    pdf = _pdf(title, claims["patient"], sections, when, asked)
    pdf_sha256 = hashlib.sha256(pdf).hexdigest()
    doc_url, bin_url = urn(t.id, "summary-pdf"), urn(t.id, "summary-pdf-binary")
    doc = json.loads(DocumentReference.model_validate({
        "resourceType": "DocumentReference",
        "masterIdentifier": {"system": "urn:ietf:rfc:3986", "value": doc_url},
        "identifier": [{"system": "urn:records-gateway:sha256", "value": pdf_sha256}],
        "status": "current", "type": {"coding": [SUMMARY_TYPE]},
        "subject": {"reference": patient_url}, "date": when,
        "author": [{"display": svc.settings.organization}],
        "description": title,
        "content": [{"attachment": {"contentType": "application/pdf", "url": bin_url,
                                    "size": len(pdf), "title": "patient-summary.pdf",
                                    "hash": base64.b64encode(hashlib.sha1(pdf).digest()).decode()}}],
    }).model_dump_json())
    binary = {"resourceType": "Binary", "contentType": "application/pdf",
              "data": base64.b64encode(pdf).decode()}
    return [Unit(date="", full_url=comp_url, entries=[shape.entry(comp_url, composition)]),
            Unit(date="", full_url=doc_url, data_class="summary",
                  entries=[shape.entry(doc_url, doc), shape.entry(bin_url, binary)])]
