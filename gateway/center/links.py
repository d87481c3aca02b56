"""Reissuing a patient's status link: the center's staff send a new one when the patient
lost the email, or the link went where it should not.

The new link revokes every earlier one at once (tokens.mint), before the mail goes: a
link that leaked stops working even if the mail server is away. The new link then goes
by email to the address on the request (tasks.mail_link_now); when the mail cannot be
sent the new link is revoked too and the caller is told, so staff try again. Audited
with the link's digest prefix, never the link or the address."""
from __future__ import annotations

from gateway import audit
from gateway.errors import ConfigError, GatewayError
from gateway.runtime.services import Services

from . import requests as reqs
from . import tasks, tokens


def reissue(svc: Services, request_id: str, actor: str, role: str | None = None,
            link_base: str | None = None) -> None:
    """Revoke the request's status links, mint a new one and mail it to the patient."""
    cfg = reqs.center(svc)
    if svc.settings.notify.email is None:
        raise ConfigError("no mail server is configured (notify.email): a new status link "
                          "cannot be sent")
    with svc.db.session() as s:
        row = reqs.get(s, request_id)
        plain = tokens.mint(s, "status", cfg.status_link_ttl_s, row.id)  # the others revoked
        audit.record(s, "center.status-link.reissued", actor=actor, role=role, request=row.id,
                     authorization_id=row.authorization_id, link=tokens.audit_name(plain))
        s.commit()
    try:
        tasks.mail_link_now(svc, request_id, link_base, plain=plain)
    except GatewayError as exc:
        with svc.db.session() as s:  # a link nobody received must not stay usable
            tokens.revoke_link(s, plain)
            audit.record(s, "center.status-link.not-mailed", actor=actor, role=role,
                         outcome="failure", request=request_id, link=tokens.audit_name(plain),
                         error=type(exc).__name__)
            s.commit()
        exc.message = (f"the new status link could not be emailed ({exc.message}); the "
                       "previous link no longer works: try again")
        raise
