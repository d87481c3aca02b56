"""Celery tasks of the center: they take ids, load what they need, do one step, commit.

Each is idempotent: a provider already asked is not asked again (a reminder is its own
task, numbered), a revocation already delivered is not sent again, a status link
already mailed is not mailed again. A transient failure (the hospital down, the mail
server away) is retried with backoff; a refusal is recorded on the provider's row.
"""
from __future__ import annotations

import base64
import json
import logging
from email.message import EmailMessage

from gateway import audit
from gateway.errors import (
    GatewayError,
    NotificationFailed,
    ProviderRejected,
    ProviderUnavailable,
)
from gateway.notify.smtp import send_message
from gateway.runtime.celery_app import celery
from gateway.runtime.services import Services, services
from gateway.storage.models import utcnow

from . import faxes, progress, sending, tokens
from . import requests as reqs

log = logging.getLogger(__name__)
RETRY = dict(autoretry_for=(ProviderUnavailable, NotificationFailed), retry_backoff=2,
             retry_backoff_max=600, retry_jitter=True, max_retries=200, acks_late=True,
             ignore_result=True)


def _signed_form(jws: str) -> bytes:
    payload = json.loads(base64.urlsafe_b64decode(jws.split(".")[1] + "=="))
    return base64.b64decode(payload["attachment"]["data"])


def send_now(svc: Services, provider_id: str, reminder: int = 0) -> str:
    """Ask one provider (again, for a reminder); returns its status."""
    with svc.db.session() as s:
        p = reqs.provider(s, provider_id)
        row = p.request
        if row.state != "open" or (reminder == 0 and p.sent_at is not None
                                   and (p.kind == "fax" or p.acknowledged_at is not None)):
            return p.status  # asked already, or nothing more is to be asked
        jws, kind, name = row.jws, p.kind, p.name
        if kind == "fax":
            path = sending.fax_request(svc, row, p, _signed_form(jws), reminder)
            reqs.started(s, p, svc.settings, utcnow())
            audit.record(s, "center.provider.sent", actor="worker", request=row.id,
                         authorization_id=row.authorization_id, provider=name, kind=kind,
                         reminder=reminder, file=path.name)
            return p.status
    cfg = svc.settings.center.providers[name]
    try:
        sending.post_to_gateway(svc, cfg, "/authorizations", jws)
    except ProviderRejected as exc:
        with svc.db.session() as s:
            p = reqs.provider(s, provider_id)
            p.status, p.error = "refused", str(exc)[:1000]
            audit.record(s, "center.provider.refused", actor="worker", outcome="failure",
                         request=p.request_id, authorization_id=p.request.authorization_id,
                         provider=name, reason=p.error)
        return "refused"
    except ProviderUnavailable as exc:
        with svc.db.session() as s:
            p = reqs.provider(s, provider_id)
            p.error = str(exc)[:1000]
        raise
    with svc.db.session() as s:
        p = reqs.provider(s, provider_id)
        now = utcnow()
        reqs.started(s, p, svc.settings, now)
        p.acknowledged_at, p.error = p.acknowledged_at or now, None
        if p.status == "sent":
            p.status = "acknowledged"
        audit.record(s, "center.provider.sent", actor="worker", request=p.request_id,
                     authorization_id=p.request.authorization_id, provider=name, kind=kind,
                     reminder=reminder, acknowledged=True)
        return p.status


def revoke_now(svc: Services, provider_id: str) -> None:
    """Tell one provider the authorization is revoked (once)."""
    with svc.db.session() as s:
        p = reqs.provider(s, provider_id)
        row = p.request
        if p.revocation_sent_at is not None or row.revocation_jws is None:
            return
        if p.kind == "fax":
            sending.fax_revocation(svc, row, p)
        else:
            cfg = svc.settings.center.providers[p.name]
            try:
                sending.post_to_gateway(svc, cfg, f"/authorizations/{row.authorization_id}/revocation",
                                        row.revocation_jws)
            except ProviderRejected as exc:
                p.error = str(exc)[:1000]
                audit.record(s, "center.provider.revocation-refused", actor="worker",
                             outcome="failure", request=row.id, provider=p.name,
                             authorization_id=row.authorization_id, reason=p.error)
                return
        p.revocation_sent_at = utcnow()
        audit.record(s, "center.provider.revocation-sent", actor="worker", request=row.id,
                     authorization_id=row.authorization_id, provider=p.name, kind=p.kind)


def mail_link_now(svc: Services, request_id: str, link_base: str | None = None,
                  plain: str | None = None) -> bool:
    """Mint a status link and mail it to the patient; False when mailed already or no
    mail server is configured. The link is stored before the mail goes (it must work the
    moment the patient opens it) and revoked again if the mail could not be sent."""
    email = svc.settings.notify.email
    with svc.db.session() as s:
        row = reqs.get(s, request_id)
        if email is None:
            log.warning("center request %s: no notify.email configured: status link not mailed",
                        row.id)
            return False
        if plain is None:  # else the link the patient holds already (their own form)
            if any(t.purpose == "status" and t.revoked_at is None
                   for t in row_tokens(s, row.id)):
                return False
            plain, minted = tokens.mint(s, "status", svc.settings.center.status_link_ttl_s,
                                        row.id), True
        else:
            minted = False
        reference, to, auth_id = reqs.reference(row.id), row.patient["email"], row.authorization_id
    msg = EmailMessage()
    msg["From"] = email.from_
    msg["To"] = to
    msg["Subject"] = f"Your second-opinion request {reference}"
    url = f"{(link_base or svc.settings.base_url).rstrip('/')}/ui/my-request?t={plain}"
    msg.set_content(
        f"{svc.settings.center.name} has your request {reference} and is asking each place "
        "that holds your records.\n\nSee where things stand (this link is yours alone; do not "
        f"share it):\n{url}\n\nThe same page lets you revoke your authorization.\n")
    try:
        send_message(email, msg, [to], svc.settings.notify.timeout_s)
    except GatewayError:
        if minted:
            with svc.db.session() as s:  # the next attempt makes a new link
                tokens.revoke_link(s, plain)
        raise
    with svc.db.session() as s:
        audit.record(s, "center.status-link.mailed", actor="worker", request=request_id,
                     authorization_id=auth_id)
    return True


def row_tokens(session, request_id: str):
    from sqlalchemy import select

    from gateway.storage.models import CenterToken

    return session.scalars(select(CenterToken).filter_by(request_id=request_id))


def tick_now(svc: Services) -> dict[str, int]:
    """One pass: faxed replies, then every open request (arrivals, reminders, deadlines)."""
    if svc.settings.center is None:
        return {}
    counts = {"faxes": faxes.scan(svc), "requests": 0, "reminders": 0}
    with svc.db.session() as s:
        ids = reqs.open_ids(s)
    for request_id in ids:
        try:
            for provider_id, reminder in progress.advance(svc, request_id):
                remind.delay(provider_id, reminder)
                counts["reminders"] += 1
        except GatewayError as exc:  # one request's trouble never stops the others
            log.warning("center request %s: %s: %s", request_id, type(exc).__name__, exc)
        counts["requests"] += 1
    return counts


def enqueue_new(request_id: str, provider_ids: list[str]) -> None:
    """After the request is committed: ask every provider, mail the status link."""
    for provider_id in provider_ids:
        send.delay(provider_id)
    mail_link.delay(request_id)


@celery.task(name="gateway.center.send", **RETRY)
def send(provider_id: str) -> str:
    return send_now(services(), provider_id)


@celery.task(name="gateway.center.remind", **RETRY)
def remind(provider_id: str, reminder: int) -> str:
    return send_now(services(), provider_id, reminder)


@celery.task(name="gateway.center.revoke", **RETRY)
def revoke(provider_id: str) -> None:
    revoke_now(services(), provider_id)


@celery.task(name="gateway.center.mail_link", **RETRY)
def mail_link(request_id: str) -> bool:
    return mail_link_now(services(), request_id)


@celery.task(name="gateway.center.tick", ignore_result=True)
def tick() -> dict[str, int]:
    return tick_now(services())
