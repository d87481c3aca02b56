"""What a notification says: the closed set of events and a payload of ids, states,
counts and links only (minimum necessary: no names, no identifiers of the patient, no
free text). Every field is checked here; anything else is refused."""
from __future__ import annotations

import re
from datetime import datetime

from gateway.config import NOTIFY_EVENTS, Settings
from gateway.errors import InvalidInput

EVENT_TYPES = NOTIFY_EVENTS

_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")  # our ids, source and peer names
_STATE = re.compile(r"^[a-z][a-z_]{0,31}$")  # requested, no_records, dead_letter, ...

# The only keys `detail` may hold, each with its kind of value
DETAIL_FIELDS = {
    # counts
    "items": "count", "delivered": "count", "refused": "count", "pending": "count",
    "sources": "count", "bundles": "count", "instances": "count", "attempts": "count",
    "days_left": "count",
    # ids: configured names and our own ids
    "source": "id", "recipient": "id", "bundle_id": "id", "receipt_id": "id",
    # states, steps and reason codes from our own vocabulary
    "step": "state", "source_state": "state", "previous_state": "state", "reason_code": "state",
    # times
    "due_at": "time", "expires_at": "time", "opened_at": "time",
}


def _check(kind: str, name: str, value):
    if kind == "count":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise InvalidInput(f"notification field {name} must be a count (an integer >= 0)")
        return value
    if kind == "time":
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                raise InvalidInput(f"notification field {name} must be an ISO 8601 time") from None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise InvalidInput(f"notification field {name} must be a time with its UTC offset")
        return value.isoformat()
    pattern = _ID if kind == "id" else _STATE
    if not isinstance(value, str) or not pattern.match(value):
        raise InvalidInput(f"notification field {name} must be {'an id' if kind == 'id' else 'a state'} "
                           f"(matching {pattern.pattern}); notifications carry no free text")
    return value


def check_detail(detail: dict | None) -> dict:
    """`detail` with each value checked against DETAIL_FIELDS; a key not listed there is
    refused (a new field is added to the list on purpose, never by a caller)."""
    out = {}
    for name, value in (detail or {}).items():
        kind = DETAIL_FIELDS.get(name)
        if kind is None:
            raise InvalidInput(f"notification detail {name!r} is not allowed: notifications carry "
                               f"only {', '.join(sorted(DETAIL_FIELDS))}")
        out[name] = _check(kind, name, value)
    return out


def links(settings: Settings, *, case_id: str | None, transfer_id: str | None,
          authorization_id: str | None) -> dict:
    """Where an operator reads more, behind the gateway's login (its own base_url)."""
    base = settings.base_url.rstrip("/")
    out = {}
    if case_id:
        out["case"] = f"{base}/cases/{case_id}"
    if transfer_id:
        out["transfer"] = f"{base}/transfers/{transfer_id}"
    if authorization_id:
        out["authorization"] = f"{base}/authorizations/{authorization_id}"
    return out


def build_payload(settings: Settings, event_id: str, event_type: str, occurred_at: datetime, *,
                  case_id: str | None = None, transfer_id: str | None = None,
                  authorization_id: str | None = None, state: str | None = None,
                  detail: dict | None = None) -> dict:
    """The JSON body a webhook receives (and an email lists), fields checked."""
    if event_type not in EVENT_TYPES:
        raise InvalidInput(f"unknown notification event {event_type!r}; events: "
                           f"{', '.join(EVENT_TYPES)}")
    for name, value in (("case", case_id), ("transfer", transfer_id),
                        ("authorization", authorization_id)):
        if value is not None:
            _check("id", name, value)
    if state is not None:
        _check("state", "state", state)
    return {"id": event_id, "type": event_type, "occurred_at": occurred_at.isoformat(),
            "case": case_id, "transfer": transfer_id, "authorization": authorization_id,
            "state": state,
            "links": links(settings, case_id=case_id, transfer_id=transfer_id,
                           authorization_id=authorization_id),
            "detail": check_detail(detail)}
