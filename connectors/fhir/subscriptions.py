"""Topic-based FHIR Subscriptions on R4 servers (the Subscriptions R5 Backport IG,
hl7.org/fhir/uv/subscriptions-backport), client side: which topics a server offers,
creating a rest-hook Subscription filtered to one patient, asking its `$status`, and
deleting it.

Topics: the canonical URLs come from the CapabilityStatement (Subscription's
`capabilitystatement-subscriptiontopic-canonical` extensions); what a topic triggers on
and may be filtered by comes from its definition, on R4 a `Basic` resource
(code `SubscriptionTopic`) carrying the R5 cross-version SubscriptionTopic extensions.
The notifications the server sends back are read by `notifications.py`.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime

import orjson

from connectors.base import SourceRejected

from .http import FhirHttp, HttpRejected

log = logging.getLogger(__name__)

BP = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
PROFILE = f"{BP}/backport-subscription"
EXT_FILTER = f"{BP}/backport-filter-criteria"
EXT_CONTENT = f"{BP}/backport-payload-content"
EXT_HEARTBEAT = f"{BP}/backport-heartbeat-period"
EXT_TIMEOUT = f"{BP}/backport-timeout"
EXT_TOPIC_CANONICAL = f"{BP}/capabilitystatement-subscriptiontopic-canonical"
ST = "http://hl7.org/fhir/5.0/StructureDefinition/extension-SubscriptionTopic"
PAYLOADS = ("id-only", "full-resource")
PATIENT_FILTERS = ("patient", "subject")  # canFilterBy parameters that name the patient
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")


@dataclass(frozen=True)
class Topic:
    """A SubscriptionTopic: its canonical URL, the resource types it triggers on and,
    per resource type, the filter parameters it allows."""

    url: str
    resources: tuple[str, ...] = ()
    filters: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def patient_filters(self, patient_id: str) -> list[str]:
        """`Type?patient=Patient/{id}` for each resource type it can be filtered on so."""
        out = []
        for rtype in self.resources:
            param = next((p for p in PATIENT_FILTERS if p in self.filters.get(rtype, ())), None)
            if param:
                out.append(f"{rtype}?{param}=Patient/{patient_id}")
        return out


@dataclass(frozen=True)
class Created:
    """A Subscription the server accepted: its id there and the status it reported."""

    remote_id: str
    status: str


def _value(ext: dict):
    return next((v for k, v in ext.items() if k.startswith("value")), None)


def _type_of(uri: str) -> str:
    return str(uri or "").rstrip("/").rsplit("/", 1)[-1]


def topic_from_basic(basic: dict) -> Topic | None:
    """A topic from its R4 `Basic` encoding (R5 cross-version extensions); None when the
    resource is not one."""
    exts = [e for e in basic.get("extension") or () if isinstance(e, dict)]
    url = next((_value(e) for e in exts if e.get("url") == f"{ST}.url"), None)
    if not isinstance(url, str):
        return None
    resources: list[str] = []
    filters: dict[str, list[str]] = {}
    for e in exts:
        parts = [p for p in e.get("extension") or () if isinstance(p, dict)]
        if e.get("url") == f"{ST}.resourceTrigger":
            rtype = _type_of(next((_value(p) for p in parts if p.get("url") == "resource"), ""))
            if rtype and rtype not in resources:
                resources.append(rtype)
        elif e.get("url") == f"{ST}.canFilterBy":
            rtype = _type_of(next((_value(p) for p in parts if p.get("url") == "resource"), ""))
            param = next((_value(p) for p in parts if p.get("url") == "filterParameter"), None)
            if isinstance(param, str):
                filters.setdefault(rtype, []).append(param)
    return Topic(url, tuple(resources), {k: tuple(v) for k, v in filters.items()})


def subscription_resource(topic: Topic, patient_id: str, endpoint: str, secret: str, payload: str,
                          heartbeat_s: int, end: datetime | None = None, timeout_s: int = 10) -> dict:
    """A backport Subscription: rest-hook to `endpoint`, the shared secret as a bearer
    header, the given payload content, filtered to one patient, with heartbeats."""
    if payload not in PAYLOADS:
        raise SourceRejected(f"subscription payload must be one of {', '.join(PAYLOADS)}, not {payload!r}")
    if not FHIR_ID.match(patient_id or ""):
        raise SourceRejected("the patient's id at the source is not a FHIR id")
    filters = topic.patient_filters(patient_id)
    if not filters:
        raise SourceRejected(f"topic {topic.url} cannot be filtered to one patient "
                             f"(it offers no {' or '.join(PATIENT_FILTERS)} filter): leave it out "
                             "of this source's subscriptions.topics")
    sub = {
        "resourceType": "Subscription",
        "meta": {"profile": [PROFILE]},
        "status": "requested",
        "reason": "New records for a second opinion, under the patient's authorization",
        "criteria": topic.url,
        "_criteria": {"extension": [{"url": EXT_FILTER, "valueString": f} for f in filters]},
        "channel": {
            "extension": [{"url": EXT_HEARTBEAT, "valueUnsignedInt": int(heartbeat_s)},
                          {"url": EXT_TIMEOUT, "valueUnsignedInt": int(timeout_s)}],
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": EXT_CONTENT, "valueCode": payload}]},
            "header": [f"Authorization: Bearer {secret}"],
        },
    }
    if end is not None:
        sub["end"] = end.isoformat(timespec="seconds")
    return sub


class SubscriptionClient:
    """Subscriptions at one FHIR server, over the source's HTTP client (its base-URL
    guard, retries and auth: SMART Backend Services needs a scope that lets it write
    Subscription, e.g. `system/Subscription.write system/*.read`)."""

    def __init__(self, http: FhirHttp):
        self.http = http

    def close(self) -> None:
        self.http.close()

    def offered_topics(self) -> set[str]:
        """Canonical URLs of the topics the server's CapabilityStatement announces."""
        cap = _json(self.http.get("metadata").content, "CapabilityStatement")
        out: set[str] = set()
        for rest in cap.get("rest") or ():
            for res in (rest or {}).get("resource") or ():
                if isinstance(res, dict) and res.get("type") == "Subscription":
                    out |= {v for e in res.get("extension") or () if isinstance(e, dict)
                            and e.get("url") == EXT_TOPIC_CANONICAL
                            and isinstance(v := _value(e), str)}
        return out

    def topics(self) -> dict[str, Topic]:
        """The topics the server offers, by canonical URL, with their triggers and filters
        (from their `Basic` definitions); an offered topic without one has neither."""
        offered = self.offered_topics()
        found: dict[str, Topic] = {}
        try:
            page = _json(self.http.get("Basic", params={"code": "SubscriptionTopic", "_count": "1000"}).content,
                         "Bundle")
        except HttpRejected:
            page = {}
        for entry in page.get("entry") or ():
            topic = topic_from_basic((entry or {}).get("resource") or {})
            if topic is not None and (topic.url in offered or not offered):
                found[topic.url] = topic
        for url in offered - found.keys():
            found[url] = Topic(url)
        return found

    def create(self, resource: dict) -> Created:
        """POST the Subscription; the server then sends its handshake to our endpoint."""
        fetched = self.http.post_json("Subscription", resource)
        doc = _json(fetched.content, "Subscription")
        remote_id = doc.get("id")
        if not isinstance(remote_id, str) or not FHIR_ID.match(remote_id):
            raise SourceRejected("the server created the Subscription but answered without its id")
        return Created(remote_id, str(doc.get("status") or "requested"))

    def read(self, remote_id: str) -> dict | None:
        """The Subscription as the server holds it; None when it is gone (404, 410)."""
        try:
            return _json(self.http.get(f"Subscription/{_checked(remote_id)}").content, "Subscription")
        except HttpRejected as exc:
            if exc.status in (404, 410):
                return None
            raise

    def status(self, remote_id: str) -> dict:
        """`Subscription/{id}/$status`: {"status", "events_since_subscription_start"}."""
        from .notifications import status_of

        doc = _json(self.http.get(f"Subscription/{_checked(remote_id)}/$status").content, "Bundle")
        first = next(((e or {}).get("resource") for e in doc.get("entry") or ()), None)
        return status_of(first or {})

    def delete(self, remote_id: str) -> bool:
        """DELETE the Subscription; True when deleted now, False when already gone."""
        try:
            self.http.delete(f"Subscription/{_checked(remote_id)}")
        except HttpRejected as exc:
            if exc.status in (404, 410):
                return False
            raise
        return True


def _checked(remote_id: str) -> str:
    if not FHIR_ID.match(remote_id or ""):
        raise SourceRejected("a Subscription id from the server is not a FHIR id")
    return remote_id


def _json(content: bytes, resource_type: str) -> dict:
    try:
        doc = orjson.loads(content) if content else {}
    except orjson.JSONDecodeError:
        raise SourceRejected(f"the server answered with something that is not JSON where a "
                             f"{resource_type} was expected") from None
    if not isinstance(doc, dict) or (doc and doc.get("resourceType") != resource_type):
        raise SourceRejected(f"the server answered with something other than a {resource_type}")
    return doc
