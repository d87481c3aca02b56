"""Signed webhooks: the event as JSON in a POST, signed so a receiver knows it came from
us and was not replayed late.

    X-Gateway-Event-Id:  the event id, the same on every attempt (de-duplicate on it)
    X-Gateway-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

A receiver recomputes the HMAC over the timestamp, a dot and the raw body bytes with the
shared secret, compares in constant time, and refuses a timestamp older than a few
minutes (`verify_signature` does all three). No redirects are followed; plain HTTP only
to loopback or where the webhook's `allow_http` says so (config.py checks it).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import time

import requests

from connectors.fhir.http import retry_after_seconds
from gateway.config import WebhookConfig
from gateway.errors import NotificationFailed, NotificationRejected

SIGNATURE_HEADER = "X-Gateway-Signature"
EVENT_ID_HEADER = "X-Gateway-Event-Id"
TRANSIENT = (408, 429)  # and 5xx; any other 4xx is a refusal for good


def body_bytes(payload: dict) -> bytes:
    """The exact bytes sent (and signed): compact JSON, keys sorted, the same each attempt."""
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def _mac(secret: bytes, timestamp: int, body: bytes) -> str:
    return hmac.new(secret, f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def sign(secret: bytes, body: bytes, timestamp: int | None = None) -> str:
    """The X-Gateway-Signature header value for `body`."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_mac(secret, t, body)}"


def verify_signature(secret: bytes | str, header: str, body: bytes, tolerance_s: float = 300,
                     now: float | None = None) -> bool:
    """For receivers: whether `header` (X-Gateway-Signature) signs `body` under `secret`
    and its timestamp is within `tolerance_s` of now (a late replay is refused). Any one
    of several v1 values may match (secrets being rotated)."""
    key = secret.encode() if isinstance(secret, str) else secret
    timestamp, macs = None, []
    for part in (header or "").split(","):
        name, _, value = part.strip().partition("=")
        if name == "t" and value.isdigit():
            timestamp = int(value)
        elif name == "v1":
            macs.append(value)
    if timestamp is None or not macs:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = _mac(key, timestamp, body)
    return any(hmac.compare_digest(expected, m) for m in macs)


def read_secret(hook: WebhookConfig) -> bytes:
    try:
        secret = hook.secret_file.read_bytes().strip()
    except OSError as exc:
        raise NotificationFailed(f"webhook {hook.name}: cannot read secret_file "
                                 f"{hook.secret_file}: {exc.strerror}") from None
    if len(secret) < 16:
        raise NotificationRejected(f"webhook {hook.name}: the secret in {hook.secret_file} is "
                                   "shorter than 16 bytes: write a longer random one")
    return secret


def send(hook: WebhookConfig, payload: dict, timeout_s: float) -> int:
    """POST the event; return the status of a 2xx answer. Raises NotificationFailed
    (retried: 408, 429, 5xx, no connection, timeout; with the Retry-After asked) or
    NotificationRejected (any other answer). The answer's body is never read into errors."""
    body = body_bytes(payload)
    headers = {"Content-Type": "application/json", "User-Agent": "records-gateway",
               EVENT_ID_HEADER: payload["id"], "X-Gateway-Event-Type": payload["type"],
               SIGNATURE_HEADER: sign(read_secret(hook), body)}
    try:
        response = requests.post(hook.url, data=body, headers=headers,
                                 timeout=(min(10.0, timeout_s), timeout_s), allow_redirects=False,
                                 stream=True)  # the answer's body is never read
    except requests.Timeout:
        raise NotificationFailed(f"webhook {hook.name}: no answer within {timeout_s:g} s") from None
    except requests.RequestException as exc:
        raise NotificationFailed(f"webhook {hook.name}: cannot connect "
                                 f"({type(exc).__name__})") from None
    status = response.status_code
    response.close()
    if 200 <= status < 300:
        return status
    if status in TRANSIENT or status >= 500:
        raise NotificationFailed(f"webhook {hook.name}: HTTP {status}",
                                 retry_after=retry_after_seconds(response.headers.get("Retry-After")))
    if 300 <= status < 400:
        raise NotificationRejected(f"webhook {hook.name}: HTTP {status} (a redirect; redirects are "
                                   "not followed: configure the final URL)")
    raise NotificationRejected(f"webhook {hook.name}: HTTP {status} (refused; fix the receiver or "
                               "the webhook's url, then replay)")
