"""Asking one provider, and telling it of a revocation.

A hospital running this gateway gets the signed authorization at its
`POST /authorizations` with the peer token it issued us (its routing rules then start
its case by themselves), and a revocation at `POST /authorizations/{id}/revocation`.
Posting again is harmless: the same JWS finds the stored authorization.

A records office with only a fax gets, in the center's fax outbox, one PDF: the
request letter with a cover sheet whose code names this provider's row (the reply
faxed back behind it comes back to this request, faxes.py), then the signed form.
Files are written under a temporary name and renamed, so the fax server never sends
half of one; the name carries the request's reference only.
"""
from __future__ import annotations

import io
from datetime import date
from pathlib import Path

import requests as http

from connectors.fax.cover import CoverSheet, render_request_pdf
from connectors.files import write_atomic
from gateway.config import CenterProviderConfig
from gateway.engine.faxes import ensure_cover_key
from gateway.errors import ConfigError, ProviderRejected, ProviderUnavailable
from gateway.runtime.services import Services
from gateway.storage.models import CenterProvider, CenterRequest

from .requests import reference


def post_to_gateway(svc: Services, cfg: CenterProviderConfig, path: str, jws: str) -> int:
    """POST a compact JWS to a peer gateway; its status code when it took it. Raises
    ProviderUnavailable (retried: no connection, 5xx, 429) or ProviderRejected."""
    try:
        token = cfg.token_file.read_text().strip()
    except OSError as exc:
        raise ConfigError(f"center provider {cfg.organization}: cannot read token_file "
                          f"({type(exc).__name__})") from None
    url = f"{cfg.base_url}{path}"
    try:
        r = http.post(url, data=jws.encode("ascii"), timeout=svc.settings.http_timeout_s,
                      headers={"Content-Type": "application/jose",
                               "Authorization": f"Bearer {token}"}, **cfg.tls())
    except http.RequestException as exc:
        raise ProviderUnavailable(f"{cfg.base_url} cannot be reached ({type(exc).__name__})") from None
    if r.status_code >= 500 or r.status_code == 429:
        raise ProviderUnavailable(f"{cfg.base_url} answered HTTP {r.status_code}")
    if r.status_code >= 400:
        raise ProviderRejected(f"{cfg.base_url} refused it (HTTP {r.status_code}): "
                               f"{_diagnostics(r)[:300]}")
    return r.status_code


def _diagnostics(r) -> str:
    try:
        return "; ".join(i.get("diagnostics", "") for i in r.json().get("issue", []))
    except (ValueError, AttributeError):
        return "no OperationOutcome"


def fax_request(svc: Services, row: CenterRequest, p: CenterProvider, signed_form: bytes,
                reminder: int = 0) -> Path:
    """Write the request letter, cover sheet and signed form for a fax provider."""
    cfg = svc.settings.center
    if cfg.fax_outbox is None:
        raise ConfigError("center.fax_outbox is not set: fax requests have nowhere to go")
    key = ensure_cover_key(svc.settings.keys_dir).read_bytes().strip()
    sheet = CoverSheet(transfer_id=p.id, patient_name=row.patient["name"],
                       birth_date=date.fromisoformat(row.patient["birthDate"]),
                       request_id=reference(row.id), return_fax=cfg.return_fax,
                       requester=cfg.name,
                       note=f"To {cfg.providers[p.name].name}: please fax the records with this "
                            "cover sheet on top.")
    letter = render_request_pdf(sheet, key, reminder)
    return write_atomic(Path(cfg.fax_outbox) / f"request-{reference(row.id)}-{p.name}-{reminder}.pdf",
                        _join(letter, signed_form))


def fax_revocation(svc: Services, row: CenterRequest, p: CenterProvider) -> Path:
    """A letter saying the patient revoked the authorization of this request."""
    from reportlab.lib.pagesizes import letter
    from reportlab.pdfgen import canvas

    cfg = svc.settings.center
    if cfg.fax_outbox is None:
        raise ConfigError("center.fax_outbox is not set: the revocation letter has nowhere to go")
    buf = io.BytesIO()
    c = canvas.Canvas(buf, pagesize=letter, invariant=1)
    c.setFont("Helvetica-Bold", 15)
    c.drawString(60, 720, "Revocation of authorization")
    c.setFont("Helvetica", 11)
    lines = [f"To: {cfg.providers[p.name].name}", f"From: {cfg.name}",
             f"Request {reference(row.id)} for {row.patient['name']}, born {row.patient['birthDate']}",
             "The patient has revoked the authorization to release records for this request.",
             "Please send nothing more under it."]
    for i, text in enumerate(lines):
        c.drawString(60, 690 - 18 * i, text)
    c.showPage()
    c.save()
    return write_atomic(Path(cfg.fax_outbox) / f"revocation-{reference(row.id)}-{p.name}.pdf",
                        buf.getvalue())


def _join(*pdfs: bytes) -> bytes:
    from pypdf import PdfReader, PdfWriter

    out = PdfWriter()
    for data in pdfs:
        for page in PdfReader(io.BytesIO(data)).pages:
            out.add_page(page)
    buf = io.BytesIO()
    out.write(buf)
    return buf.getvalue()


