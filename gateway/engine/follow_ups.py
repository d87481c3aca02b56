"""What a follow-up sends: only what its recipient does not hold yet.

A follow-up is a transfer under an authorization whose earlier transfer to the same
recipient completed. A record the source serves again in the same bytes (same origin
and sha256) is not stored at all. A FHIR page chunk is coarser than what changed:
servers that ignore `_since` serve the whole record again, and one new resource shifts
the chunks after it. So each mapped resource from a FHIR source also carries a digest
(its URL at the source -> sha256 of its JSON as it travels, the transfer's own Patient
reference left out), and a follow-up drops the resources delivered before with the same
digest; a record left with nothing new is `sent-before` (neither delivered nor refused).
A changed resource (new version, new content) goes again.
"""
from __future__ import annotations

import hashlib
from dataclasses import replace

from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.runtime.services import Services
from gateway.storage.models import Item, Transfer
from mappings import Mapped
from mappings.fhir.schema_check import PulledResource

PATIENT_PLACEHOLDER = b"urn:patient"  # each transfer has its own Patient entry


def delivered_earlier(s: Session, t: Transfer) -> bool:
    """Whether an earlier transfer under the same authorization completed to this recipient."""
    return s.scalars(select(Transfer.id).where(
        Transfer.authorization_id == t.authorization_id, Transfer.id != t.id,
        Transfer.recipient == t.recipient, Transfer.state == "completed").limit(1)).first() is not None


def _earlier_items(t: Transfer, *where, column=Item):
    return (select(column).join(Transfer, Item.transfer_id == Transfer.id)
            .where(Transfer.authorization_id == t.authorization_id, Transfer.id != t.id,
                   Transfer.recipient == t.recipient, Transfer.state == "completed",
                   Item.state == "mapped", *where))


def record_delivered_before(svc: Services, t: Transfer, source: str, origin: str, sha256: str) -> bool:
    """Whether an earlier transfer delivered this very record (same source, origin and
    bytes) to the same recipient. (The origin is sealed at rest: compared here, once the
    bytes' digest has narrowed the rows.)"""
    with svc.db.session() as s:
        return origin in s.scalars(_earlier_items(t, Item.source == source, Item.sha256 == sha256,
                                                  column=Item.origin)).all()


def delivered_resources(svc: Services, t: Transfer) -> set[tuple[str, str]]:
    """(URL at the source, digest) of every resource delivered earlier to this recipient."""
    with svc.db.session() as s:
        metas = s.scalars(_earlier_items(t, column=Item.record_meta))
        return {(url, digest) for meta in metas for url, digest in ((meta or {}).get("sent") or {}).items()}


def digests(kept: list[Mapped], patient_reference: str) -> dict[str, str]:
    """URL at the source -> digest, for the mapped resources that came from a FHIR source."""
    out = {}
    for m in kept:
        url = source_url(m)
        if url is not None and m.json is not None:
            text = m.json.replace(patient_reference.encode(), PATIENT_PLACEHOLDER)
            out[url] = hashlib.sha256(text).hexdigest()
    return out


def new_only(kept: list[Mapped], sent: dict[str, str], delivered: set[tuple[str, str]]) -> list[Mapped]:
    """`kept` without the resources delivered before (and Provenance targets naming them:
    a Provenance left with none goes too)."""
    dropped = {f"urn:uuid:{m.resource.id}" for m in kept
               if (url := source_url(m)) in sent and (url, sent[url]) in delivered}
    if not dropped:
        return kept
    out = []
    for m in kept:
        if f"urn:uuid:{m.resource.id}" in dropped:
            continue
        if source_url(m) is None and type(provenance := _model(m)).__name__ == "Provenance":
            targets = [r for r in provenance.target if r.reference not in dropped]
            if not targets:
                continue
            provenance.target = targets
            m = replace(m, resource=provenance, json=None)  # the model writes it now
        out.append(m)
    return out


def still_sent(kept: list[Mapped], sent: dict[str, str]) -> dict[str, str]:
    """The digests of the resources that are sent after all."""
    return {url: sent[url] for m in kept if (url := source_url(m)) in sent}


def _model(m: Mapped):
    """The resource's R4B model (a pulled one's is built now)."""
    return m.resource.model() if isinstance(m.resource, PulledResource) else m.resource


def source_url(m: Mapped) -> str | None:
    if isinstance(m.resource, PulledResource):  # (its Meta model is built only when asked for)
        return m.resource.meta_source
    meta = getattr(m.resource, "meta", None)
    return getattr(meta, "source", None) if meta is not None else None
