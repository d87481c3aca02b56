"""Invitations: the center's staff ask a patient to fill in the request form alone.

The patient gets an email with a link carrying a one-time invitation token (tokens.py:
only its sha256 is stored, nothing about the patient is in the link). The link opens
the same form as the staff's, without a sign-in; its submission uses the invitation up
(requests.create), so a replay or a second submission signs and sends nothing. The
email address is used for the mail only: it is not stored, nor audited."""
from __future__ import annotations

from email.message import EmailMessage

from gateway import audit
from gateway.errors import ConfigError, GatewayError, InvalidInput
from gateway.notify.smtp import send_message
from gateway.runtime.services import Services

from . import requests as reqs
from . import tokens
from .form import EMAIL


def invite(svc: Services, address: str, actor: str, role: str | None = None,
           link_base: str | None = None) -> None:
    """Mint an invitation and mail its link to `address` (audited, without the address)."""
    cfg = reqs.center(svc)
    address = (address or "").strip()
    if len(address) > 254 or not EMAIL.match(address):
        raise InvalidInput("enter an email address like name@example.org")
    email = svc.settings.notify.email
    if email is None:
        raise ConfigError("no mail server is configured (notify.email): the invitation "
                          "cannot be sent")
    with svc.db.session() as s:
        plain = tokens.mint(s, "invite", cfg.invite_ttl_s)
        s.commit()
    msg = EmailMessage()
    msg["From"] = email.from_
    msg["To"] = address
    msg["Subject"] = f"{cfg.name}: your second-opinion request form"
    url = f"{(link_base or svc.settings.base_url).rstrip('/')}/ui/invite?t={plain}"
    days = max(1, round(cfg.invite_ttl_s / 86400))
    msg.set_content(
        f"{cfg.name} invites you to fill in and sign the form that lets it ask for your "
        f"records for a second opinion.\n\nOpen the form (this link is yours alone, works "
        f"once, for {days} day{'s' if days != 1 else ''}):\n{url}\n")
    try:
        send_message(email, msg, [address], svc.settings.notify.timeout_s)
    except GatewayError:
        with svc.db.session() as s:  # an unsent invitation must not stay usable
            tokens.revoke_link(s, plain)
            s.commit()
        raise
    with svc.db.session() as s:
        audit.record(s, "center.invite.created", actor=actor, role=role,
                     invitation=tokens.audit_name(plain))
        s.commit()
