"""Reading a Subscriptions Backport notification: a `history` Bundle whose first entry is
the subscription's status, an R4 `Parameters` (kebab-case names as the IG defines them;
the camelCase R5 names are taken too) or an R4B `SubscriptionStatus`.

Only what the gateway acts on is kept: the notification type, the status, the event
count, and per event its number and focus as `Type/id` (the host of an absolute focus
URL is never used: the focus is read later from the configured source).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

import orjson

from connectors.base import SourceRejected

TYPES = frozenset({"handshake", "heartbeat", "event-notification", "query-status", "query-event"})
STATUSES = frozenset({"requested", "active", "error", "off", "entered-in-error"})
MAX_EVENTS = 1000
_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_HISTORY = re.compile(r"/_history/[^/]+$")


class MalformedNotification(SourceRejected):
    """The body is not a Subscriptions Backport notification; the message says what is wrong
    (never what the body held)."""


@dataclass(frozen=True)
class Event:
    number: int
    focus: str | None  # "Type/id", or None for an empty payload


@dataclass(frozen=True)
class Notification:
    type: str
    status: str | None
    topic: str | None
    subscription: str | None  # the id of the Subscription at the server, when given
    events_since_start: int | None
    events: tuple[Event, ...]


def _count(value, what: str) -> int:
    if isinstance(value, bool):
        raise MalformedNotification(f"{what} must be a whole number")
    if isinstance(value, int) and value >= 0:
        return value
    if isinstance(value, str) and value.isdigit() and len(value) <= 18:
        return int(value)
    raise MalformedNotification(f"{what} must be a whole number")


def _focus(ref) -> str | None:
    if ref is None:
        return None
    ref = ref.get("reference") if isinstance(ref, dict) else None
    if not isinstance(ref, str):
        raise MalformedNotification("an event's focus must be a reference")
    parts = _HISTORY.sub("", ref).rstrip("/").split("/")
    if len(parts) < 2 or not _TYPE.match(parts[-2]) or not _ID.match(parts[-1]):
        raise MalformedNotification("an event's focus is not a Type/id reference")
    return f"{parts[-2]}/{parts[-1]}"


def _value(p: dict):
    return next((v for k, v in p.items() if k.startswith("value")), None)


def _last_id(ref) -> str | None:
    ref = ref.get("reference") if isinstance(ref, dict) else None
    if not isinstance(ref, str):
        return None
    tail = _HISTORY.sub("", ref).rstrip("/").rsplit("/", 1)[-1]
    return tail if _ID.match(tail) else None


def _from_parameters(doc: dict) -> dict:
    out: dict = {"events": []}
    for p in doc.get("parameter") or ():
        if not isinstance(p, dict):
            raise MalformedNotification("a status parameter is not an object")
        name = p.get("name")
        if name == "type":
            out["type"] = _value(p)
        elif name == "status":
            out["status"] = _value(p)
        elif name == "topic":
            out["topic"] = _value(p)
        elif name == "subscription":
            out["subscription"] = _last_id(p.get("valueReference"))
        elif name in ("events-since-subscription-start", "eventsSinceSubscriptionStart"):
            out["since"] = _count(_value(p), "events-since-subscription-start")
        elif name in ("notification-event", "notificationEvent"):
            event: dict = {}
            for part in p.get("part") or ():
                pname = (part or {}).get("name")
                if pname in ("event-number", "eventNumber"):
                    event["number"] = _count(_value(part), "event-number")
                elif pname == "focus":
                    event["focus"] = _focus(part.get("valueReference"))
            out["events"].append(event)
    return out


def _from_status(doc: dict) -> dict:
    events = []
    for e in doc.get("notificationEvent") or ():
        if not isinstance(e, dict):
            raise MalformedNotification("a notificationEvent is not an object")
        event = {"focus": _focus(e.get("focus"))}
        if e.get("eventNumber") is not None:
            event["number"] = _count(e.get("eventNumber"), "eventNumber")
        events.append(event)
    out = {"type": doc.get("type"), "status": doc.get("status"), "topic": doc.get("topic"),
           "subscription": _last_id(doc.get("subscription")), "events": events}
    if doc.get("eventsSinceSubscriptionStart") is not None:
        out["since"] = _count(doc["eventsSinceSubscriptionStart"], "eventsSinceSubscriptionStart")
    return out


def status_of(resource: dict) -> dict:
    """The status and event count of a SubscriptionStatus (Parameters or R4B resource)."""
    rtype = resource.get("resourceType")
    if rtype == "Parameters":
        got = _from_parameters(resource)
    elif rtype == "SubscriptionStatus":
        got = _from_status(resource)
    else:
        raise MalformedNotification("the status is neither a Parameters nor a SubscriptionStatus")
    return {"status": got.get("status"), "events_since_subscription_start": got.get("since")}


def parse_notification(body: bytes) -> Notification:
    """The notification in `body`, or MalformedNotification saying what is wrong."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise MalformedNotification("the body is not JSON") from None
    if not isinstance(doc, dict) or doc.get("resourceType") != "Bundle":
        raise MalformedNotification("a notification is a Bundle")
    if doc.get("type") != "history":
        raise MalformedNotification("a notification Bundle has type 'history'")
    entries = doc.get("entry")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        raise MalformedNotification("a notification Bundle starts with the subscription's status")
    first = entries[0].get("resource")
    if not isinstance(first, dict):
        raise MalformedNotification("a notification Bundle starts with the subscription's status")
    rtype = first.get("resourceType")
    if rtype == "Parameters":
        got = _from_parameters(first)
    elif rtype == "SubscriptionStatus":
        got = _from_status(first)
    else:
        raise MalformedNotification("the first entry is neither a Parameters nor a SubscriptionStatus")
    if got.get("type") not in TYPES:
        raise MalformedNotification(f"the notification type must be one of {', '.join(sorted(TYPES))}")
    if got.get("status") is not None and got["status"] not in STATUSES:
        raise MalformedNotification("the subscription status is not a Subscription status code")
    if len(got["events"]) > MAX_EVENTS:
        raise MalformedNotification(f"more than {MAX_EVENTS} events in one notification")
    if any("number" not in e for e in got["events"]):
        raise MalformedNotification("every notification event needs its event number")
    if got["type"] == "event-notification" and not got["events"] and got.get("since") is None:
        raise MalformedNotification("an event notification names no event and no event count")
    topic = got.get("topic")
    return Notification(
        type=got["type"], status=got.get("status"), topic=topic if isinstance(topic, str) else None,
        subscription=got.get("subscription"), events_since_start=got.get("since"),
        events=tuple(Event(e["number"], e.get("focus")) for e in got["events"]))
