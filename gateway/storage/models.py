"""Database tables. The database is the source of truth for every transfer."""
from __future__ import annotations

import uuid
from datetime import datetime, timezone

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from .sealed import ColumnKeys, SealedJSON, SealedText, keys_of


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid.uuid4().hex


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is not None and value.tzinfo is None:
            raise ValueError("naive datetime given to the database")
        return value.astimezone(timezone.utc) if value is not None else None

    def process_result_value(self, value, dialect):
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        return value


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict: JSON, list: JSON}


class Authorization(Base):
    """A verified release authorization (the signed JWS and what it says)."""

    __tablename__ = "authorizations"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # the JWS jti
    issuer: Mapped[str] = mapped_column(String(255))
    key_id: Mapped[str] = mapped_column(String(255))
    jws_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    # patient data, sealed at rest (sealed.py): the JWS names the patient and carries the Consent
    jws: Mapped[str] = mapped_column(SealedText("authorizations.jws"))  # to re-verify, for auditors
    claims: Mapped[dict] = mapped_column(SealedJSON("authorizations.claims"))  # API only
    consent: Mapped[dict] = mapped_column(SealedJSON("authorizations.consent"))  # FHIR R4 Consent
    recipient_id: Mapped[str] = mapped_column(String(255))
    not_before: Mapped[datetime | None]
    expires_at: Mapped[datetime | None]
    status: Mapped[str] = mapped_column(String(16), default="active")  # active | revoked
    revoked_at: Mapped[datetime | None]
    revoked_reason: Mapped[str | None] = mapped_column(SealedText("authorizations.revoked_reason"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Transfer(Base):
    """One transfer: a state machine (see gateway/engine/transfers.py)."""

    __tablename__ = "transfers"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    authorization_id: Mapped[str] = mapped_column(ForeignKey("authorizations.id"))
    recipient: Mapped[str] = mapped_column(String(255))  # configured peer name
    state: Mapped[str] = mapped_column(String(24), default="pending", index=True)
    # why failed / cancelled: may quote a source, a file name or an operator's words
    reason: Mapped[str | None] = mapped_column(SealedText("transfers.reason"))
    created_by: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # a step claims the transfer until lease_until, so a duplicate message is a no-op
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)  # of the current step
    next_attempt_at: Mapped[datetime | None]
    bundle_id: Mapped[str | None] = mapped_column(String(64))
    bundle_sha256: Mapped[str | None] = mapped_column(String(64))
    bundle_blob: Mapped[str | None] = mapped_column(String(64))
    bundle_size: Mapped[int | None] = mapped_column(BigInteger)
    receipt: Mapped[dict | None]  # verified receipt claims
    receipt_jws: Mapped[str | None] = mapped_column(Text)
    completed_at: Mapped[datetime | None]

    sources: Mapped[list["TransferSource"]] = relationship(
        back_populates="transfer", order_by="TransferSource.position", cascade="all, delete-orphan")
    authorization: Mapped[Authorization] = relationship()


class TransferSource(Base):
    """One configured source of a transfer, pulled independently."""

    __tablename__ = "transfer_sources"
    __table_args__ = (UniqueConstraint("transfer_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    transfer_id: Mapped[str] = mapped_column(ForeignKey("transfers.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    position: Mapped[int] = mapped_column(Integer, default=0)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending|pulling|done|failed
    items: Mapped[int] = mapped_column(Integer, default=0)
    bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    total: Mapped[int | None] = mapped_column(Integer)  # expected items, when known
    error: Mapped[str | None] = mapped_column(SealedText("transfer_sources.error"))
    # where the source says this pull started (its clock): the next pull of the same
    # authorization from this source asks only for what changed since
    cursor: Mapped[str | None] = mapped_column(String(64))
    # each source is pulled by its own task (gateway/engine/pulls.py), which claims the row
    # until lease_until and, while the source is not ready, retries on its own schedule
    lease_owner: Mapped[str | None] = mapped_column(String(64))
    lease_until: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    next_attempt_at: Mapped[datetime | None]

    transfer: Mapped[Transfer] = relationship(back_populates="sources")


def item_origin_key(keys: ColumnKeys, transfer_id: str, source: str, origin: str) -> str:
    """Item.origin_key: the keyed HMAC of the item's transfer, source and origin (with the
    transfer in it, the same record pulled twice is not linkable across transfers)."""
    return keys.index("items.origin", f"{transfer_id}\0{source}\0{origin}")


def _origin_key_default(context) -> str:
    row = context.get_current_parameters()
    return item_origin_key(keys_of(context.dialect), row["transfer_id"], row["source"], row["origin"])


class Item(Base):
    """One record pulled for a transfer, and what became of it."""

    __tablename__ = "items"
    __table_args__ = (UniqueConstraint("transfer_id", "source", "origin_key", name="uq_items_origin_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    transfer_id: Mapped[str] = mapped_column(ForeignKey("transfers.id", ondelete="CASCADE"), index=True)
    source: Mapped[str] = mapped_column(String(255))
    # id of the record at the source (a file name may name the patient): sealed, and unique
    # per transfer and source by its keyed HMAC; written once, at insert
    origin: Mapped[str] = mapped_column(SealedText("items.origin"))
    origin_key: Mapped[str] = mapped_column(String(64), default=_origin_key_default)
    kind: Mapped[str] = mapped_column(String(32))
    media_type: Mapped[str] = mapped_column(String(128))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    blob_key: Mapped[str] = mapped_column(String(64))
    fetched_at: Mapped[datetime]
    record_meta: Mapped[dict] = mapped_column(SealedJSON("items.record_meta"), default=dict)
    # pulled -> mapped | excluded (outside the authorization) | failed (with error).
    # A DICOM instance (kind "dicom") is "mapped" when its study is: it has no FHIR
    # resources of its own and goes beside the bundle (C-STORE / STOW-RS)
    state: Mapped[str] = mapped_column(String(16), default="pulled")
    error: Mapped[str | None] = mapped_column(SealedText("items.error"))
    resources_blob: Mapped[str | None] = mapped_column(String(64))  # mapped FHIR JSON
    data_class: Mapped[str | None] = mapped_column(String(32))
    clinical_date: Mapped[str | None] = mapped_column(SealedText("items.clinical_date"))
    # DICOM instances: when the recipient's DICOM destination confirmed it, and what it
    # answered (C-STORE status, STOW-RS outcome); a resumed delivery skips these
    forwarded_at: Mapped[datetime | None]
    forward_status: Mapped[str | None] = mapped_column(String(255))


class ApiToken(Base):
    """A bearer token for the API; only its sha256 is kept."""

    __tablename__ = "api_tokens"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    token_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    # recipient tokens: the organization whose inbox it may read (None: any, other roles)
    organization: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    # set at creation (None: never expires); authenticate refuses the token from then on
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class ReceivedBundle(Base):
    """Receive mode: a bundle another gateway delivered to us."""

    __tablename__ = "received_bundles"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    sender: Mapped[str] = mapped_column(String(255))  # token name of the sending peer
    idempotency_key: Mapped[str] = mapped_column(String(128))
    bundle_identifier: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    entries: Mapped[int] = mapped_column(Integer)
    blob_key: Mapped[str] = mapped_column(String(64))
    receipt_jws: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    opened_at: Mapped[datetime | None]
    # processing (claimed by a request until claimed_until) -> accepted
    state: Mapped[str] = mapped_column(String(16), default="accepted")
    claimed_until: Mapped[datetime | None]
    recipient_org: Mapped[str | None] = mapped_column(String(255), index=True)  # whose inbox
    sender_org: Mapped[str | None] = mapped_column(String(255))
    submission_group: Mapped[str | None] = mapped_column(String(255))  # parts of one transfer
    in_reply_to: Mapped[str | None] = mapped_column(String(64), index=True)  # a reply: our bundle id
    consent_id: Mapped[str | None] = mapped_column(String(64), index=True)  # its Consent's id
    part: Mapped[int] = mapped_column(Integer, default=1)
    parts: Mapped[int] = mapped_column(Integer, default=1)
    response: Mapped[dict | None]  # the transaction-response, replayed as it was
    opened_by: Mapped[str | None] = mapped_column(String(255))
    opened_receipt_jws: Mapped[str | None] = mapped_column(Text)
    opened_notified_at: Mapped[datetime | None]  # the sender has the "opened" receipt

    __table_args__ = (UniqueConstraint("sender", "idempotency_key"),)


class ReceivedInstance(Base):
    """Receive mode: a DICOM instance a peer gateway sent us by STOW-RS, stored encrypted.
    Counted per study in the receipts of the bundles that describe it."""

    __tablename__ = "received_instances"
    __table_args__ = (UniqueConstraint("sender", "sop_instance_uid"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sender: Mapped[str] = mapped_column(String(255))  # token name of the sending peer
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    series_uid: Mapped[str] = mapped_column(String(64))
    sop_instance_uid: Mapped[str] = mapped_column(String(64))
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    blob_key: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    # the first accepted bundle whose manifest lists it; instances no bundle took within
    # receive_upload_ttl_s (a sender that gave up, no Consent ever shown) are deleted
    bundle_id: Mapped[str | None] = mapped_column(String(32), index=True)  # ReceivedBundle.id


class TransferBundle(Base):
    """One transaction Bundle of a transfer (a large transfer is split into parts), its
    detached signature, and the receipt (or plain acknowledgment) the recipient gave."""

    __tablename__ = "transfer_bundles"
    __table_args__ = (UniqueConstraint("transfer_id", "part"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    transfer_id: Mapped[str] = mapped_column(ForeignKey("transfers.id", ondelete="CASCADE"), index=True)
    part: Mapped[int] = mapped_column(Integer)  # 1..parts
    parts: Mapped[int] = mapped_column(Integer)
    bundle_id: Mapped[str] = mapped_column(String(64), unique=True)  # also the Idempotency-Key
    blob_key: Mapped[str] = mapped_column(String(64))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    entries: Mapped[int] = mapped_column(Integer)
    entry_hashes: Mapped[dict] = mapped_column(JSON, default=dict)  # fullUrl -> sha256
    # documents uploaded beside it: "Binary/{id}" -> {"sha256", "size"} (the receipt names them)
    attachments: Mapped[dict] = mapped_column(JSON, default=dict)
    signature: Mapped[str] = mapped_column(Text)  # detached JWS (RFC 7515 appendix F)
    # assembled -> delivered (answer stored) -> receipted (verified) | acknowledged (plain FHIR)
    state: Mapped[str] = mapped_column(String(16), default="assembled")
    answer: Mapped[str | None] = mapped_column(Text)  # receipt JWS, or the plain response JSON
    receipt: Mapped[dict | None]  # verified receipt claims / acknowledgment summary
    delivered_at: Mapped[datetime | None]
    opened: Mapped[dict | None]  # verified "opened" receipt claims
    opened_jws: Mapped[str | None] = mapped_column(Text)


class TransferUpload(Base):
    """A document too large to travel inline (over `attachment_inline_max_bytes`): its
    bytes go to the recipient as `Binary/{binary_id}` before the first bundle that
    references it (TransferBundle.attachments); this row records that the recipient
    holds them, so a resumed delivery does not send them again."""

    __tablename__ = "transfer_uploads"
    __table_args__ = (UniqueConstraint("transfer_id", "binary_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    transfer_id: Mapped[str] = mapped_column(ForeignKey("transfers.id", ondelete="CASCADE"), index=True)
    binary_id: Mapped[str] = mapped_column(String(64))  # stable: from the transfer and the sha256
    blob_key: Mapped[str] = mapped_column(String(64))  # the record's blob
    media_type: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending -> uploaded
    uploaded_at: Mapped[datetime | None]


class ReceivedBinary(Base):
    """Receive mode: a document's bytes uploaded by a sender as `Binary/{binary_id}`
    before the bundle that references it; bound to that bundle once it is accepted."""

    __tablename__ = "received_binaries"
    __table_args__ = (UniqueConstraint("sender", "binary_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sender: Mapped[str] = mapped_column(String(255))  # token name of the sending peer
    binary_id: Mapped[str] = mapped_column(String(64))
    content_type: Mapped[str] = mapped_column(String(128))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    blob_key: Mapped[str] = mapped_column(String(64))
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    bundle_id: Mapped[str | None] = mapped_column(String(32), index=True)  # ReceivedBundle.id


class AuditEvent(Base):
    """Append-only log of everything that happened (see gateway/audit/).

    Written in the same database transaction as the state change it records.
    Never updated or deleted.
    """

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                     autoincrement=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    type: Mapped[str] = mapped_column(String(64), index=True)  # e.g. "transfer.pull.finished"
    actor: Mapped[str] = mapped_column(String(255))  # token name / "worker" / "system"
    role: Mapped[str | None] = mapped_column(String(16))
    outcome: Mapped[str] = mapped_column(String(16), default="success")  # success|failure|deny
    transfer_id: Mapped[str | None] = mapped_column(String(32), index=True)
    authorization_id: Mapped[str | None] = mapped_column(String(64), index=True)
    patient_key: Mapped[str | None] = mapped_column(String(64), index=True)  # hashed, not PHI
    detail: Mapped[dict] = mapped_column(JSON, default=dict)  # ids, counts, sizes, hashes only
    # SHA-256(0x00 || canonical bytes of the event), hex: the event's Merkle leaf
    leaf_hash: Mapped[str] = mapped_column(String(64))


Index("ix_audit_events_at", AuditEvent.at)


class AuditLogHead(Base):
    """One row (id=1): the log's size and the right edge of its Merkle tree.

    Every append updates this row first, which serializes writers (a row lock on
    PostgreSQL, the write lock on SQLite) so sequence numbers are gap-free and ordered.
    """

    __tablename__ = "audit_log_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    frontier: Mapped[list] = mapped_column(JSON, default=list)  # hex hashes of perfect subtrees
    last_at: Mapped[datetime | None]


class AuditTreeNode(Base):
    """A complete subtree hash of the audit log's Merkle tree (level >= 1; leaves are on
    audit_events). Immutable once written, so proofs read O(log n) rows."""

    __tablename__ = "audit_tree_nodes"

    level: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    idx: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    hash: Mapped[str] = mapped_column(String(64))  # hex, like leaf_hash and root_hash


class AuditCheckpoint(Base):
    """A signed checkpoint (tree size, root hash, time) of the audit log."""

    __tablename__ = "audit_checkpoints"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    tree_size: Mapped[int] = mapped_column(BigInteger, unique=True)
    root_hash: Mapped[str] = mapped_column(String(64))
    timestamp_ms: Mapped[int] = mapped_column(BigInteger, unique=True)
    origin: Mapped[str] = mapped_column(String(255))
    key_id: Mapped[str] = mapped_column(String(255))
    signature: Mapped[str] = mapped_column(Text)  # base64 Ed25519 over the checkpoint body


class Notification(Base):
    """One event for one subscriber channel (a webhook, email): the notify outbox.

    Written in the transaction of the change it tells about, so an event is never lost
    and never sent for a change that rolled back; sent later by gateway/notify/delivery.py.
    The id is the event id the receiver sees on every attempt (its de-duplication key).
    """

    __tablename__ = "notifications"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    channel: Mapped[str] = mapped_column(String(80))  # "webhook:<name>" or "email"
    event_type: Mapped[str] = mapped_column(String(32))
    case_id: Mapped[str | None] = mapped_column(String(128))
    transfer_id: Mapped[str | None] = mapped_column(String(128))
    authorization_id: Mapped[str | None] = mapped_column(String(128), index=True)
    payload: Mapped[dict] = mapped_column(JSON)  # ids, states, counts and links only
    state: Mapped[str] = mapped_column(String(16), default="pending")  # pending | sent | dead
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # when it is due; while one worker sends it, pushed ahead so no other takes it
    next_attempt_at: Mapped[datetime | None]
    last_error: Mapped[str | None] = mapped_column(Text)  # ours; of the peer's answer, its status
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    sent_at: Mapped[datetime | None]


Index("ix_notifications_due", Notification.state, Notification.next_attempt_at)


class FhirSubscription(Base):
    """A FHIR Subscription (R4 Backport IG) we hold at a source for one patient and topic,
    on behalf of an owner (the case it serves). Our `id` is in the notification URL; the
    channel's shared secret is kept only as its SHA-256."""

    __tablename__ = "fhir_subscriptions"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)  # unguessable, in the hook URL
    owner: Mapped[str] = mapped_column(String(64), index=True)
    source: Mapped[str] = mapped_column(String(255))  # configured source name
    patient_ref: Mapped[str] = mapped_column(String(64))  # the patient's FHIR id at the source
    topic: Mapped[str] = mapped_column(String(1024))  # SubscriptionTopic canonical URL
    remote_id: Mapped[str | None] = mapped_column(String(64))  # Subscription id at the source
    secret_sha256: Mapped[str] = mapped_column(String(64))
    payload: Mapped[str] = mapped_column(String(16))  # id-only | full-resource
    heartbeat_s: Mapped[int] = mapped_column(Integer)
    # requested (sent) | active (handshake taken) | error | off (deleted at the source)
    status: Mapped[str] = mapped_column(String(16), default="requested", index=True)
    events_seen: Mapped[int] = mapped_column(BigInteger, default=0)  # highest event number taken
    last_event_at: Mapped[datetime | None]
    last_heartbeat_at: Mapped[datetime | None]  # any word from the source counts
    heartbeat_missed_at: Mapped[datetime | None]  # set when reported, cleared by the next word
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    closed_at: Mapped[datetime | None]


class Trigger(Base):
    """Something new at a source for an owner: an event a subscription announced, or a gap
    (events skipped, heartbeats missed) that an incremental pull must catch up. Stored
    before the source is answered; the same event number of a subscription is stored once."""

    __tablename__ = "trigger_inbox"
    __table_args__ = (UniqueConstraint("subscription_id", "event_number"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True,
                                    autoincrement=True)
    subscription_id: Mapped[str] = mapped_column(ForeignKey("fhir_subscriptions.id"))
    owner: Mapped[str] = mapped_column(String(64), index=True)
    event_number: Mapped[int | None] = mapped_column(BigInteger)  # None for gaps
    kind: Mapped[str] = mapped_column(String(24))  # event | gap | heartbeat-missed
    focus: Mapped[list] = mapped_column(JSON, default=list)  # ["Type/id"] at the source
    received_at: Mapped[datetime] = mapped_column(default=utcnow)
    processed_at: Mapped[datetime | None] = mapped_column(index=True)


class Case(Base):
    """Everything this gateway does under one authorization: its transfers (the first
    and the follow-ups, found by authorization id), each source's status, deadlines and
    reminders. One per authorization: importing it again finds the same case."""

    __tablename__ = "cases"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    authorization_id: Mapped[str] = mapped_column(ForeignKey("authorizations.id"), unique=True)
    state: Mapped[str] = mapped_column(String(16), default="open", index=True)  # review|open|closed
    recipient: Mapped[str | None] = mapped_column(String(255))  # the configured peer, when routed
    # disclosers and a recipient no configuration matched: [{"party", "id", "reason"}]
    unrouted: Mapped[list] = mapped_column(JSON, default=list)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    approved_by: Mapped[str | None] = mapped_column(String(255))
    approved_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]  # every source complete or without records
    closed_at: Mapped[datetime | None]
    closed_reason: Mapped[str | None] = mapped_column(String(255))
    sources: Mapped[list[CaseSource]] = relationship(back_populates="case", order_by="CaseSource.id",
                                                     cascade="all, delete-orphan")


class CaseSource(Base):
    """A configured source a case asks for records, and where its answer stands:
    requested -> receiving -> complete | no-records | overdue | failed."""

    __tablename__ = "case_sources"
    __table_args__ = (UniqueConstraint("case_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    case_id: Mapped[str] = mapped_column(ForeignKey("cases.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(255))
    discloser: Mapped[str] = mapped_column(String(255))  # the authorization's discloser id
    auto: Mapped[str] = mapped_column(String(8))  # start | review | off, from the configuration
    status: Mapped[str] = mapped_column(String(16), default="requested")
    reason: Mapped[str | None] = mapped_column(Text)  # no-records / failed: why
    started: Mapped[bool] = mapped_column(default=False)  # its first pull was started
    deadline_at: Mapped[datetime | None]
    reminders: Mapped[int] = mapped_column(Integer, default=0)
    next_reminder_at: Mapped[datetime | None]
    next_pull_at: Mapped[datetime | None]  # scheduled incremental pull
    case: Mapped[Case] = relationship(back_populates="sources")


class CenterRequest(Base):
    """A second-opinion center's request for one patient (gateway/center/): the signed
    authorization its intake made from the patient's form, sent to every provider named."""

    __tablename__ = "center_requests"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    authorization_id: Mapped[str] = mapped_column(String(64), unique=True)  # the JWS jti
    jws: Mapped[str] = mapped_column(SealedText("center_requests.jws"))  # what the providers get
    # the patient's name, birth date and email, their questions: patient data, sealed
    patient: Mapped[dict] = mapped_column(SealedJSON("center_requests.patient"))
    state: Mapped[str] = mapped_column(String(16), default="open", index=True)  # open|complete|revoked
    expires_at: Mapped[datetime]
    created_by: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[datetime | None]
    opened_at: Mapped[datetime | None]  # the center's staff first opened what arrived
    opinion_ready_at: Mapped[datetime | None]  # the written opinion is ready
    revoked_at: Mapped[datetime | None]
    revocation_jws: Mapped[str | None] = mapped_column(Text)  # signed; names no patient
    providers: Mapped[list[CenterProvider]] = relationship(
        back_populates="request", order_by="CenterProvider.name", cascade="all, delete-orphan")


class CenterProvider(Base):
    """One provider of a center request and where its answer stands:
    sent -> acknowledged -> receiving -> complete | no-records, or overdue."""

    __tablename__ = "center_providers"
    __table_args__ = (UniqueConstraint("request_id", "name"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    request_id: Mapped[str] = mapped_column(ForeignKey("center_requests.id", ondelete="CASCADE"),
                                            index=True)
    name: Mapped[str] = mapped_column(String(64))  # the directory entry
    kind: Mapped[str] = mapped_column(String(16))  # gateway | fax
    organization: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    error: Mapped[str | None] = mapped_column(Text)  # the last sending failure (no patient data)
    sent_at: Mapped[datetime | None]
    acknowledged_at: Mapped[datetime | None]
    deadline_at: Mapped[datetime | None]
    reminders: Mapped[int] = mapped_column(Integer, default=0)
    next_reminder_at: Mapped[datetime | None]
    revocation_sent_at: Mapped[datetime | None]
    # what arrived: counts by kind ({"bundles", "documents", "resources", "byType", "faxes",
    # "pages"}), never content
    counts: Mapped[dict] = mapped_column(JSON, default=dict)
    request: Mapped[CenterRequest] = relationship(back_populates="providers")


class CenterArrival(Base):
    """Something a provider sent for a center request, counted once: a received bundle
    or a faxed reply."""

    __tablename__ = "center_arrivals"
    __table_args__ = (UniqueConstraint("kind", "ref"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    provider_id: Mapped[str] = mapped_column(ForeignKey("center_providers.id", ondelete="CASCADE"),
                                             index=True)
    kind: Mapped[str] = mapped_column(String(16))  # bundle | fax
    ref: Mapped[str] = mapped_column(String(64))  # received bundle id, or fax id
    counts: Mapped[dict] = mapped_column(JSON, default=dict)
    arrived_at: Mapped[datetime] = mapped_column(default=utcnow)


class CenterToken(Base):
    """A one-time form token or a patient's status link: only its sha256 is stored."""

    __tablename__ = "center_tokens"

    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    purpose: Mapped[str] = mapped_column(String(16))  # form | status | invite
    request_id: Mapped[str | None] = mapped_column(ForeignKey("center_requests.id",
                                                              ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[datetime]
    used_at: Mapped[datetime | None]  # form, invite: submitted (a replay is refused)
    revoked_at: Mapped[datetime | None]  # status: the link no longer works


class WebUser(Base):
    """A person who signs in to the web pages with a username and password; holds a role
    and organization as an API token does. Only a scrypt hash of the password is kept."""

    __tablename__ = "web_users"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    username: Mapped[str] = mapped_column(String(255), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16))
    organization: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    disabled_at: Mapped[datetime | None]  # set: sign-in refused, open sessions end


class WebSession(Base):
    """A signed-in browser: the cookie holds a random value, only its sha256 is kept here.
    Ends on sign-out, after the idle timeout, or when its token or person is revoked."""

    __tablename__ = "web_sessions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    secret_sha256: Mapped[str] = mapped_column(String(64), unique=True)
    csrf: Mapped[str] = mapped_column(String(64))  # the form token of this session
    actor: Mapped[str] = mapped_column(String(255))  # who, as the audit log names them
    role: Mapped[str] = mapped_column(String(16))
    organization: Mapped[str | None] = mapped_column(String(255))
    token_id: Mapped[str | None] = mapped_column(String(32))  # signed in with an API token
    user_id: Mapped[str | None] = mapped_column(String(32))  # or as a person
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    last_seen_at: Mapped[datetime] = mapped_column(default=utcnow)
    ended_at: Mapped[datetime | None]


class SignInFailures(Base):
    """Failed sign-ins of one account name or one client address (kept as a sha256, never
    as typed: a name field sometimes holds a password), and its lockout if any. The web
    sign-in counts here so every process and host of a deployment limits together."""

    __tablename__ = "sign_in_failures"

    scope: Mapped[str] = mapped_column(String(8), primary_key=True)  # name | address
    key_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    failures: Mapped[int] = mapped_column(Integer, default=0)  # within the current window
    window_started_at: Mapped[datetime]
    lockouts: Mapped[int] = mapped_column(Integer, default=0)  # in a row: the next lasts longer
    locked_until: Mapped[datetime | None]
    last_failure_at: Mapped[datetime] = mapped_column(index=True)


def dicom_sop_key(keys: ColumnKeys, sop_instance_uid: str) -> str:
    """The keyed HMAC a SOP Instance UID is looked up by (the UID itself is sealed)."""
    return keys.index("dicom.sop", sop_instance_uid)


class DicomMove(Base):
    """A C-MOVE a worker has in flight to the standing DICOM receiver (`records-gateway
    dicom-receiver`): who may send its instances (the source's AE title and addresses,
    the Move Originator AE title and Message ID), which studies and patients it is for,
    and until when it is open (a worker killed mid-move leaves it to expire)."""

    __tablename__ = "dicom_moves"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    transfer_id: Mapped[str] = mapped_column(ForeignKey("transfers.id", ondelete="CASCADE"),
                                             index=True)
    source: Mapped[str] = mapped_column(String(255))
    message_id: Mapped[int] = mapped_column(Integer)  # the C-MOVE's Message ID
    peer_aet: Mapped[str] = mapped_column(String(16))
    peer_addresses: Mapped[list] = mapped_column(JSON)
    originator_aet: Mapped[str] = mapped_column(String(16))
    # {"studies": [...], "patient_ids": [...]}: what an instance of this move must be of
    scope: Mapped[dict] = mapped_column(SealedJSON("dicom_moves.scope"))
    expires_at: Mapped[datetime] = mapped_column(index=True)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class DicomMoveInstance(Base):
    """A SOP Instance UID (by its keyed HMAC) an open C-MOVE may bring."""

    __tablename__ = "dicom_move_instances"

    move_id: Mapped[int] = mapped_column(ForeignKey("dicom_moves.id", ondelete="CASCADE"),
                                         primary_key=True)
    sop_key: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class DicomArrival(Base):
    """What the standing receiver took for a transfer's source: an instance stored in the
    blob store ("received"), one it refused after receiving ("error"), or a second copy
    with other bytes ("conflict"). The worker pulling that source reads these."""

    __tablename__ = "dicom_arrivals"
    __table_args__ = (UniqueConstraint("transfer_id", "source", "sop_key", "state"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    transfer_id: Mapped[str] = mapped_column(ForeignKey("transfers.id", ondelete="CASCADE"),
                                             index=True)
    source: Mapped[str] = mapped_column(String(255))
    sop_key: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16))  # received | error | conflict
    sha256: Mapped[str] = mapped_column(String(64), default="")
    size: Mapped[int] = mapped_column(BigInteger, default=0)
    blob_key: Mapped[str] = mapped_column(String(64), default="", index=True)
    # the instance's UIDs and header (received), or the reason (error, conflict)
    detail: Mapped[dict] = mapped_column(SealedJSON("dicom_arrivals.detail"))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
