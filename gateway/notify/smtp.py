"""Email over SMTP: STARTTLS (the server's certificate checked against `ca_file` or the
system's CAs, for the configured host name), then AUTH with the username and the
password read from `password_file`, then one message to the configured recipients.
Credentials never go in the clear except to a loopback relay explicitly allowed."""
from __future__ import annotations

import smtplib
import ssl
from email.message import EmailMessage

from gateway.config import EmailConfig
from gateway.errors import NotificationFailed, NotificationRejected


def message(cfg: EmailConfig, payload: dict) -> EmailMessage:
    """The mail for an event: ids, states and links only (the payload's own fields)."""
    about = " ".join(f"{k} {payload[k]}" for k in ("case", "transfer", "authorization")
                     if payload.get(k))
    msg = EmailMessage()
    msg["From"] = cfg.from_
    msg["To"] = ", ".join(cfg.to)
    msg["Subject"] = f"[records gateway] {payload['type']}" + (f": {about}" if about else "")
    # the event id, the same on every attempt: mail clients and filters de-duplicate on it
    msg["Message-ID"] = f"<{payload['id']}@{cfg.from_.rpartition('@')[2]}>"
    msg["X-Gateway-Event-Id"] = payload["id"]
    lines = [f"event: {payload['type']}", f"event id: {payload['id']}",
             f"occurred at: {payload['occurred_at']}"]
    lines += [f"{k}: {payload[k]}" for k in ("case", "transfer", "authorization", "state")
              if payload.get(k)]
    lines += [f"{k}: {v}" for k, v in sorted(payload["detail"].items())]
    lines += [f"link ({k}): {v}" for k, v in sorted(payload["links"].items())]
    msg.set_content("\n".join(lines) + "\n")
    return msg


def _password(cfg: EmailConfig) -> str:
    try:
        return cfg.password_file.read_text().strip()
    except OSError as exc:
        raise NotificationFailed(f"email: cannot read password_file {cfg.password_file}: "
                                 f"{exc.strerror}") from None


def send(cfg: EmailConfig, payload: dict, timeout_s: float) -> None:
    """Send the event's mail. Raises NotificationFailed (retried: no connection, a 4xx
    reply, a refused login) or NotificationRejected (no STARTTLS offered, an untrusted
    certificate, a permanent 5xx reply)."""
    _refuse_plain_auth(cfg)  # before the message is even made
    send_message(cfg, message(cfg, payload), cfg.to, timeout_s)


def _refuse_plain_auth(cfg: EmailConfig) -> None:
    refusal = cfg.plain_auth_refusal()
    if refusal:
        raise NotificationRejected(f"email: {refusal}")


def send_message(cfg: EmailConfig, msg: EmailMessage, to: list[str], timeout_s: float) -> None:
    """Send one message to `to` through the configured server (errors as for `send`)."""
    where = f"mail server {cfg.host}:{cfg.port}"
    _refuse_plain_auth(cfg)
    try:
        with smtplib.SMTP(cfg.host, cfg.port, timeout=timeout_s) as smtp:
            smtp.ehlo()
            if cfg.starttls:
                context = ssl.create_default_context(
                    cafile=str(cfg.ca_file) if cfg.ca_file else None)
                smtp.starttls(context=context)
                smtp.ehlo()
            if cfg.username is not None:
                smtp.login(cfg.username, _password(cfg))
            smtp.send_message(msg, from_addr=cfg.from_, to_addrs=to)
    except smtplib.SMTPAuthenticationError as exc:
        raise NotificationFailed(f"{where} refused the login of {cfg.username} (SMTP "
                                 f"{exc.smtp_code}): check username and password_file") from None
    except smtplib.SMTPNotSupportedError:
        raise NotificationRejected(f"{where} does not offer STARTTLS (or AUTH): nothing was sent; "
                                   "use a server that does") from None
    except ssl.SSLCertVerificationError as exc:
        raise NotificationRejected(f"{where}: its certificate is not trusted "
                                   f"({exc.verify_message}): set notify.email.ca_file") from None
    except smtplib.SMTPRecipientsRefused as exc:
        codes = sorted({code for code, _ in exc.recipients.values()})
        raise NotificationRejected(f"{where} refused every recipient (SMTP {codes})") from None
    except smtplib.SMTPResponseException as exc:
        error = NotificationFailed if 400 <= exc.smtp_code < 500 else NotificationRejected
        raise error(f"{where} answered SMTP {exc.smtp_code}") from None
    except (smtplib.SMTPException, OSError) as exc:
        raise NotificationFailed(f"{where}: cannot send ({type(exc).__name__})") from None
