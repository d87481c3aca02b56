"""The filled, signed form as a PDF (reportlab, already used for the patient summary):
attached to the signed authorization, and faxed to records offices with the request."""
from __future__ import annotations

import io
import textwrap

from gateway.config import Settings
from mappings import DATA_CLASSES

from .form import STATEMENTS, Form

STATEMENT_TITLES = {"rightToRevoke": "Your right to revoke",
                    "conditioning": "Your care does not depend on signing",
                    "redisclosure": "Records may be shared again"}


def render(form: Form, settings: Settings, request_ref: str) -> bytes:
    """One or more letter pages: who, what, to whom, why, until when, the statements
    acknowledged, the patient's questions, the typed signature."""
    from reportlab.lib.pagesizes import letter
    from reportlab.pdfgen import canvas

    center = settings.center
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=letter, invariant=1)
    c.setTitle("Authorization to release health information")
    y = 740

    def line(text: str, font: str = "Helvetica", size: int = 10, width: int = 95) -> None:
        nonlocal y
        for part in textwrap.wrap(text, width) or [""]:
            if y < 72:
                c.showPage()
                y = 740
            c.setFont(font, size)
            c.drawString(60, y, part)
            y -= size + 5

    line("Authorization to release health information", "Helvetica-Bold", 15)
    line(f"Request {request_ref} for {center.name} (45 CFR 164.508)", size=9)
    y -= 6
    line("Patient", "Helvetica-Bold", 11)
    line(f"Name: {form.patient_name}    Date of birth: {form.birth_date.isoformat()}")
    line(f"Identifier: {form.identifier_value} ({form.identifier_system})")
    line("Who may release the records", "Helvetica-Bold", 11)
    for name in form.providers:
        provider = center.providers[name]
        line(f"- {provider.name}" + (f" (fax {provider.fax_number})" if provider.fax_number else ""))
    line("To whom", "Helvetica-Bold", 11)
    line(f"{center.name}, {settings.base_url}")
    line("What", "Helvetica-Bold", 11)
    kinds = ("all records" if form.data_classes == ["all"] else
             ", ".join(sorted(c for c in form.data_classes if c in DATA_CLASSES)))
    span = ""
    if form.date_start or form.date_end:
        span = (f", dated {form.date_start.isoformat() if form.date_start else 'any time'}"
                f" to {form.date_end.isoformat() if form.date_end else 'today'}")
    line(f"{kinds}{span}")
    line("Why", "Helvetica-Bold", 11)
    line(form.purpose)
    line("Until", "Helvetica-Bold", 11)
    line(f"{form.expiration.isoformat()}, or the end of the second-opinion review if sooner")
    line("Statements read and acknowledged", "Helvetica-Bold", 11)
    for key, title in STATEMENT_TITLES.items():
        line(f"[x] {title}: {STATEMENTS[key]}", size=9, width=110)
    if form.questions:
        line("The patient's questions for the second-opinion doctor", "Helvetica-Bold", 11)
        for para in form.questions.splitlines():
            line(para, size=9, width=110)
    line("Signature", "Helvetica-Bold", 11)
    who = "the patient" if form.signed_by == "patient" else \
        f"the patient's representative ({form.authority})"
    line(f"Signed electronically by {form.signature_name}, {who}, on "
         f"{form.signature_date.isoformat()} (typed name)")
    c.showPage()
    c.save()
    return buf.getvalue()
