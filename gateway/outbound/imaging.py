"""DICOM instances through a transfer: they follow their study through mapping, go
beside the bundle on delivery, and are counted in the receipt.

- Mapping: an instance (item kind "dicom") carries no FHIR resource; its study's manifest
  (kind "dicom-study") becomes the ImagingStudy that describes it. So an instance takes
  its study's outcome: "mapped" when the study is (released, sent beside the bundle),
  "excluded" or "failed" with it otherwise.
- Delivery: before the bundle, every mapped instance not yet forwarded goes to the
  recipient's DICOM destination (config.PeerConfig.dicom_destination: a PACS by C-STORE
  or a DICOMweb base by STOW-RS; a peer gateway by default takes them itself): as soon
  as its source's pull ends if other sources are still pulled, else while the bundle
  is assembled, and what is left, on delivery. Each
  outcome is committed as it comes (a C-STORE's at once, a STOW-RS request's together,
  before the next request), so a resumed delivery sends only what is missing.
  Unconfirmed instances (destination down, busy) make the step retry (DeliveryFailed);
  an instance the destination refuses for good fails the transfer (DeliveryRejected).
- Receipts: `expected_studies` is what a receiving gateway must say it holds.
"""
from __future__ import annotations

import shutil
from typing import Callable

from sqlalchemy import func, select, update

from connectors.dicom.forward import Outgoing, forward_c_store, forward_stow_rs
from gateway import audit
from gateway.errors import DeliveryFailed, DeliveryRejected
from gateway.exchange.manifest import study_digest
from gateway.runtime.services import Services
from gateway.storage.models import Item, Transfer, utcnow

from .sockets import paced_session

INSTANCE, STUDY = "dicom", "dicom-study"
BATCH_FILES, BATCH_BYTES = 64, 256 << 20  # plaintext copies on disk at a time


def settle_instances(svc: Services, t: Transfer, source: str | None = None) -> int:
    """Give each pulled instance its study's outcome (run after the studies are mapped);
    return how many are released. With `source`: only that source's instances whose
    study is mapped already (as its pull ends; the mapping step settles the rest)."""
    where = {"transfer_id": t.id} if source is None else {"transfer_id": t.id, "source": source}
    released = 0
    with svc.db.session() as s:
        studies = {(i.source, i.origin): i for i in s.scalars(
            select(Item).filter_by(kind=STUDY, **where))}
        for item in s.scalars(select(Item).filter_by(kind=INSTANCE, state="pulled", **where)):
            study = studies.get((item.source, (item.record_meta or {}).get("study_uid")))
            if source is not None and (study is None or study.state != "mapped"):
                continue
            if study is None:
                item.state, item.error = "failed", "no manifest of its study was pulled"
            elif study.state == "mapped":
                item.state, item.error = "mapped", None
                item.data_class, item.clinical_date = study.data_class, study.clinical_date
                released += 1
            elif study.state == "failed":
                item.state, item.error = "failed", "its study could not be mapped"
            else:
                item.state = "excluded"
                item.error = "its study is outside the authorized data classes or dates"
    return released


def expected_studies(svc: Services, transfer_id: str) -> dict[str, dict]:
    """Study UID -> {"instances": n, "sha256": study_digest} of what goes beside."""
    by_study: dict[str, list[str]] = {}
    with svc.db.session() as s:
        for meta, sha in s.execute(select(Item.record_meta, Item.sha256).filter_by(
                transfer_id=transfer_id, kind=INSTANCE, state="mapped")):
            by_study.setdefault((meta or {}).get("study_uid") or "unknown", []).append(sha)
    return {uid: {"instances": len(v), "sha256": study_digest(v)} for uid, v in by_study.items()}


def forward_summary(s, transfer_id: str) -> dict | None:
    """The per-instance outcomes as the transfer's acknowledgment of its images."""
    rows = s.execute(select(Item.forward_status, func.count()).filter_by(
        transfer_id=transfer_id, kind=INSTANCE, state="mapped")
        .where(Item.forwarded_at.is_not(None)).group_by(Item.forward_status)).all()
    if not rows:
        return None
    return {"instances": sum(n for _, n in rows), "outcomes": {k or "": n for k, n in rows}}


def _todo(svc: Services, transfer_id: str) -> list[Item]:
    with svc.db.session() as s:
        todo = s.scalars(select(Item).filter_by(transfer_id=transfer_id, kind=INSTANCE,
                                                state="mapped")
                         .where(Item.forwarded_at.is_(None))).all()
    return sorted(todo, key=lambda i: i.origin)  # sealed at rest: sorted once read


def forward(svc: Services, t: Transfer, keep_alive: Callable[[], None]) -> None:
    """Send every instance not yet confirmed; raise unless all are confirmed."""
    todo = _todo(svc, t.id)
    if not todo:
        return
    peer = svc.settings.peers[t.recipient]
    dest = peer.dicom_destination()
    if dest is None:
        raise DeliveryRejected(f"recipient {t.recipient} has no DICOM destination for the "
                               f"{len(todo)} DICOM instance(s) of this transfer; configure "
                               f"peers.{t.recipient}.dicom (c-store or stow-rs)")
    where = (dest.url if dest.kind == "stow-rs"
             else f"dicom://{dest.ae_title}@{dest.host}:{dest.port}")
    with svc.db.session() as s:
        audit.record(s, "transfer.dicom.forward.started", actor="worker", transfer_id=t.id,
                     authorization_id=t.authorization_id, recipient=t.recipient,
                     destination=dest.kind, instances=len(todo))
    by_sop = {i.record_meta["sop_instance_uid"]: i for i in todo}
    failed: dict[str, str] = {}
    confirmed: dict[str, list[int]] = {}  # forward status -> ids of items, not yet committed

    def commit() -> None:
        """Record the confirmed instances: a crash after this never sends them again."""
        if not confirmed:
            return
        with svc.db.session() as s:
            now = utcnow()
            for status, ids in confirmed.items():
                s.execute(update(Item).where(Item.id.in_(ids))
                          .values(forwarded_at=now, forward_status=status)
                          .execution_options(synchronize_session=False))
        confirmed.clear()

    def on_result(sop: str, ok: bool, detail: str) -> None:
        if ok:
            confirmed.setdefault(f"{dest.kind} {detail}"[:255], []).append(by_sop[sop].id)
            if dest.kind == "c-store":  # one instance a message: committed as it comes
                commit()
        else:
            failed[sop] = detail
        keep_alive()

    workdir = svc.settings.work_dir / t.id / "forward"
    for batch in _batches(todo):
        shutil.rmtree(workdir, ignore_errors=True)
        workdir.mkdir(parents=True)
        try:
            outgoing = []
            for item in batch:  # plaintext only for the batch in flight
                path = workdir / f"{item.id}.dcm"
                svc.blobs.copy_to(item.blob_key, path)
                m = item.record_meta
                outgoing.append(Outgoing(m["sop_instance_uid"], m.get("sop_class_uid", ""),
                                         m.get("transfer_syntax", ""), path))
            if dest.kind == "c-store":
                report = forward_c_store(outgoing, dest.host, dest.port, dest.ae_title,
                                         dest.calling_aet, on_result=on_result)
            else:
                headers = {"Authorization": f"Bearer {peer.bearer()}"} if dest.send_token else {}
                # the peer gateway's own STOW-RS: its CA and our client certificate
                tls = peer.tls() if dest.url.startswith(peer.base_url) else None
                report = forward_stow_rs(outgoing, dest.url, on_result=on_result,
                                         session=paced_session(),  # the read timeout measures the recipient
                                         headers=headers, batch_bytes=dest.batch_bytes,
                                         timeout=svc.settings.http_timeout_s, tls=tls,
                                         on_answer=commit,  # a request's outcomes at once
                                         on_sending=keep_alive)  # the claim held while sending
        finally:
            commit()
            shutil.rmtree(workdir, ignore_errors=True)
        if report.pending and not report.sent:
            break  # the destination takes nothing now: no use trying the other batches
    sent = len(todo) - len(_todo(svc, t.id))
    with svc.db.session() as s:
        audit.record(s, "transfer.dicom.forward.finished", actor="worker", transfer_id=t.id,
                     authorization_id=t.authorization_id, recipient=t.recipient,
                     destination=dest.kind, sent=sent, refused=len(failed),
                     unconfirmed=len(todo) - sent - len(failed),
                     outcome="success" if sent == len(todo) else "failure")
    if failed:
        first = "; ".join(f"{sop}: {why}" for sop, why in list(failed.items())[:3])
        raise DeliveryRejected(f"{where} refused {len(failed)} DICOM instance(s): {first}")
    if sent < len(todo):
        raise DeliveryFailed(f"{where}: {len(todo) - sent} of {len(todo)} DICOM instance(s) "
                             "not yet accepted; retrying")


def _batches(items: list[Item]):
    batch: list[Item] = []
    size = 0
    for item in items:
        if batch and (len(batch) >= BATCH_FILES or size + item.size > BATCH_BYTES):
            yield batch
            batch, size = [], 0
        batch.append(item)
        size += item.size
    if batch:
        yield batch
