"""What a recipient's answer means: transient (retried, never sooner than its
`Retry-After` asks) or a refusal, with the text of its OperationOutcome. One
classification for bundles and uploads alike."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from gateway.errors import DeliveryFailed, DeliveryRejected

TRANSIENT = (408, 409, 425, 429)  # and 5xx: retried, never sooner than a Retry-After says


def outcome_text(status: int, content: bytes) -> str:
    try:
        body = json.loads(content)
        issues = body.get("issue", []) if isinstance(body, dict) else []
        text = "; ".join(str(i.get("diagnostics", i.get("code", ""))) for i in issues)
    except (ValueError, UnicodeDecodeError, AttributeError):
        text = ""
    return f"HTTP {status}" + (f": {text[:300]}" if text else "")


def retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds a `Retry-After` header (delta-seconds or HTTP-date, RFC 9110 10.2.3) asks
    us to wait; None when absent or unreadable."""
    if not value or not value.strip():
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - (now or datetime.now(timezone.utc))).total_seconds())


def answer_error(recipient: str, what: str, status: int, headers, content: bytes) -> Exception:
    """The error for a non-2xx answer: transient (retried, honouring Retry-After) for
    408/409/425/429/5xx, else a refusal."""
    text = outcome_text(status, content)
    if status in TRANSIENT or status >= 500:
        return DeliveryFailed(f"recipient {recipient}: {what}: {text}",
                              retry_after=retry_after(headers.get("Retry-After")))
    return DeliveryRejected(f"recipient {recipient} refused {what}: {text}")
