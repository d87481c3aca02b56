"""FHIR Subscriptions held for an owner (the case they serve): subscribe at a source for
one patient to the topics its configuration names, delete them at the source when the
owner closes, hand out the triggers their notifications left in the inbox, and notice
missed heartbeats (a `heartbeat-missed` trigger: catch up by an incremental pull).

Notifications themselves are taken by `notifications.py`. The network is never called
inside a database transaction: a subscription's row is committed before the server is
asked, so its handshake (which may come before the server's answer) finds it.
"""
from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.orm import Session

from connectors.base import ConnectorError
from connectors.fhir.connector import http_from_options
from connectors.fhir.subscriptions import SubscriptionClient, subscription_resource
from gateway import audit
from gateway.errors import InvalidInput, ProviderRejected, ProviderUnavailable
from gateway.runtime.celery_app import celery
from gateway.runtime.services import Services, services
from gateway.storage.models import FhirSubscription, Trigger, utcnow

from .sources import connector_options

log = logging.getLogger(__name__)

OPEN = ("requested", "active", "error")  # held at the source: deleted when the owner closes


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def hook_url(svc: Services, sid: str) -> str:
    return f"{svc.settings.base_url.rstrip('/')}/subscriptions/{sid}/notify"


def _client(svc: Services, source_name: str) -> SubscriptionClient:
    cfg = svc.settings.sources.get(source_name)
    if cfg is None:
        raise InvalidInput(f"unknown source {source_name!r}: name one configured under sources")
    return SubscriptionClient(http_from_options(connector_options(svc, cfg)))


def _provider_error(source: str, exc: ConnectorError):
    cls = ProviderUnavailable if exc.transient else ProviderRejected
    return cls(f"source {source}: subscriptions: {exc}")


def subscribe(svc: Services, owner: str, source_name: str, patient_id: str,
              end: datetime | None = None) -> list[FhirSubscription]:
    """Subscribe at `source_name` for the patient with FHIR id `patient_id` there, to each
    configured topic the source offers; returns the owner's open subscriptions at that
    source for that patient (calling it again subscribes to nothing twice). `end` (the
    authorization's expiry) is passed on, so the source stops by itself even if we cannot
    tell it. No subscriptions configured for the source: an empty list."""
    cfg = svc.settings.sources.get(source_name)
    if cfg is None:
        raise InvalidInput(f"unknown source {source_name!r}: name one configured under sources")
    if cfg.subscriptions is None:
        return []
    if not owner or len(owner) > 64:
        raise InvalidInput("a subscription's owner is a non-empty id of at most 64 characters")
    with svc.db.session() as s:
        held = {row.topic for row in _open(s, owner, source_name, patient_id)}
    wanted = [t for t in cfg.subscriptions.topics if t not in held]
    if wanted:
        client = _client(svc, source_name)
        try:
            offered = client.topics()
            for url in wanted:
                if url not in offered:
                    log.warning("subscriptions: source %s does not offer topic %s; skipped", source_name, url)
                    continue
                if not offered[url].patient_filters(patient_id):  # it would announce other patients' records
                    log.warning("subscriptions: topic %s at source %s cannot be filtered to one patient; "
                                "skipped", url, source_name)
                    continue
                _subscribe_one(svc, client, owner, source_name, patient_id, offered[url], end)
        except ConnectorError as exc:
            raise _provider_error(source_name, exc) from None
        finally:
            client.close()
    with svc.db.session() as s:
        return list(_open(s, owner, source_name, patient_id))


def _open(s: Session, owner: str, source: str, patient_id: str):
    return s.scalars(select(FhirSubscription).where(
        FhirSubscription.owner == owner, FhirSubscription.source == source,
        FhirSubscription.patient_ref == patient_id, FhirSubscription.status.in_(("requested", "active")))
        .order_by(FhirSubscription.created_at))


def _subscribe_one(svc: Services, client: SubscriptionClient, owner: str, source: str, patient_id: str,
                   topic, end: datetime | None) -> None:
    cfg = svc.settings.sources[source].subscriptions
    sid, secret = secrets.token_urlsafe(24), secrets.token_urlsafe(32)
    resource = subscription_resource(topic, patient_id, hook_url(svc, sid), secret, cfg.payload,
                                     cfg.heartbeat_s, end=end)
    with svc.db.session() as s:
        s.add(FhirSubscription(id=sid, owner=owner, source=source, patient_ref=patient_id, topic=topic.url,
                               secret_sha256=secret_hash(secret), payload=cfg.payload,
                               heartbeat_s=cfg.heartbeat_s, status="requested", events_seen=0))
    try:
        created = client.create(resource)
    except ConnectorError:
        # off: should the source have created it after all, its notifications are refused
        # (404), so it stops by itself
        with svc.db.session() as s:
            row = s.get(FhirSubscription, sid)
            row.status, row.closed_at = "off", utcnow()
        log.warning("subscriptions: source %s refused subscription %s", source, sid)
        raise
    with svc.db.session() as s:
        row = s.get(FhirSubscription, sid, with_for_update=True)
        row.remote_id = created.remote_id  # the handshake may have made it active already
        audit.record(s, "subscription.created", actor="system", owner=owner, source=source,
                     subscription=sid, topic=topic.url, payload=cfg.payload)
    log.info("subscriptions: %s at source %s for owner %s, topic %s", sid, source, owner, topic.url)


def unsubscribe_owner(svc: Services, owner: str) -> int:
    """Delete every subscription of `owner` at its source (gone already counts as
    deleted); returns how many were closed. A source that cannot be reached leaves its
    rows open and raises ProviderUnavailable: call again later."""
    with svc.db.session() as s:
        rows = [(r.id, r.source, r.remote_id) for r in s.scalars(select(FhirSubscription).where(
            FhirSubscription.owner == owner, FhirSubscription.status.in_(OPEN)))]
    closed, failure = 0, None
    for source in sorted({r[1] for r in rows}):
        try:
            client = _client(svc, source)
        except (InvalidInput, ConnectorError) as exc:  # source no longer configured: nothing to call
            log.warning("subscriptions: source %s cannot be called (%s); closing its rows",
                        source, type(exc).__name__)
            client = None
        try:
            for sid, _, remote_id in (r for r in rows if r[1] == source):
                try:
                    if client is not None and remote_id:
                        client.delete(remote_id)
                except ConnectorError as exc:
                    failure = failure or _provider_error(source, exc)
                    continue
                with svc.db.session() as s:
                    row = s.get(FhirSubscription, sid)
                    row.status, row.closed_at = "off", utcnow()
                    audit.record(s, "subscription.closed", actor="system", owner=owner, source=source,
                                 subscription=sid)
                closed += 1
        finally:
            if client is not None:
                client.close()
    log.info("subscriptions: owner %s: %d closed of %d", owner, closed, len(rows))
    if failure is not None:
        raise failure
    return closed


def remote_status(svc: Services, sid: str) -> dict:
    """The source's own view of a subscription (`$status`): status and event count."""
    with svc.db.session() as s:
        row = s.get(FhirSubscription, sid)
        if row is None or not row.remote_id:
            raise InvalidInput("no such subscription held at a source")
        source, remote_id = row.source, row.remote_id
    client = _client(svc, source)
    try:
        return client.status(remote_id)
    except ConnectorError as exc:
        raise _provider_error(source, exc) from None
    finally:
        client.close()


def pending_triggers(session: Session, owner: str) -> list[Trigger]:
    """The owner's triggers not processed yet, oldest first."""
    return list(session.scalars(select(Trigger).where(Trigger.owner == owner, Trigger.processed_at.is_(None))
                                .order_by(Trigger.id)))


def mark_processed(session: Session, trigger_ids: list[int]) -> int:
    """Mark triggers processed (in the caller's transaction); returns how many changed."""
    now, n = utcnow(), 0
    for trigger in session.scalars(select(Trigger).where(Trigger.id.in_(list(trigger_ids)),
                                                         Trigger.processed_at.is_(None))):
        trigger.processed_at = now
        n += 1
    return n


def check_heartbeats(svc: Services, now: datetime | None = None) -> int:
    """Record a `heartbeat-missed` trigger for each active subscription the source has not
    been heard from for two heartbeat periods (once, until it is heard from again);
    returns how many were recorded."""
    now = now or utcnow()
    with svc.db.session() as s:
        candidates = [(r.id, r.owner, r.heartbeat_s) for r in s.scalars(select(FhirSubscription).where(
            FhirSubscription.status == "active", FhirSubscription.heartbeat_missed_at.is_(None)))]
    n = 0
    for sid, owner, period in candidates:
        cutoff = now - timedelta(seconds=2 * period)
        with svc.db.session() as s:
            # one conditional write: a notification taken meanwhile makes it match nothing
            marked = s.execute(update(FhirSubscription).where(
                FhirSubscription.id == sid, FhirSubscription.status == "active",
                FhirSubscription.heartbeat_missed_at.is_(None), FhirSubscription.created_at <= cutoff,
                or_(FhirSubscription.last_heartbeat_at.is_(None), FhirSubscription.last_heartbeat_at <= cutoff),
                or_(FhirSubscription.last_event_at.is_(None), FhirSubscription.last_event_at <= cutoff))
                .values(heartbeat_missed_at=now).execution_options(synchronize_session=False))
            if marked.rowcount == 1:
                s.add(Trigger(subscription_id=sid, owner=owner, kind="heartbeat-missed", focus=[],
                              received_at=now))
                n += 1
                log.info("subscriptions: %s missed its heartbeats (owner %s)", sid, owner)
    return n


@celery.task(name="gateway.subscriptions.check_heartbeats", ignore_result=True)
def check_heartbeats_task() -> None:
    check_heartbeats(services())
