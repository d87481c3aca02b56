"""A gateway in both modes with something of every kind in its store, for the route tests:
an imported authorization, a transfer, a received bundle with a document and a study
whose image came by STOW-RS, an upload sent before its bundle, a fax awaiting review,
audit events; with `center`, a second-opinion center too: a patient's request and its
status link. Every patient detail and every id is random, so finding one in an answer
can only mean it leaked."""
from __future__ import annotations

import base64
import hashlib
import json
import secrets
import struct
import uuid
import zlib
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

from sqlalchemy import update

from gateway import create_app
from gateway.storage.models import ApiToken
from gateway.trust.authorizations import example_claims
from gateway.trust.keys import SigningKeys
from gateway.trust.receipts import SIGNATURE_HEADER, sign_bundle
from gateway.trust.tokens import ROLES, create_token, revoke_token
from tests.helpers import ISSUER, SENDER_ORG, bearer

HOSPITAL = "org-hospital-route-test"  # the peer that delivers bundles to this gateway
PEER_NAME = "hospital-route-test"     # its token's name, as configured under `senders`


@dataclass
class World:
    app: object
    tokens: dict[str, str]                 # role -> a valid token
    expired: dict[str, str]                # role -> a token past its expiry
    revoked: dict[str, str]                # role -> a revoked token
    ids: dict[str, str]                    # path parameter name -> a real id of that kind
    leaks: list[str] = field(default_factory=list)  # must never appear in a refusal
    config: dict = field(default_factory=dict)
    center: dict = field(default_factory=dict)  # request_id, link (its status link), patient

    def headers(self, role: str) -> dict:
        return bearer(self.tokens[role])


def _word(n: int = 10) -> str:
    return "Zx" + secrets.token_hex(n // 2)


def _patient() -> dict:
    return {"name": {"family": _word(), "given": [_word()]},
            "birthDate": f"19{secrets.randbelow(90) + 10}-0{secrets.randbelow(9) + 1}-1{secrets.randbelow(9)}",
            "identifiers": [{"system": "urn:oid:2.16.840.1.113883.19.5",
                             "value": f"MRN-{secrets.token_hex(6)}"}]}


def _tokens(app) -> tuple[dict, dict, dict]:
    """A valid, an expired and a revoked token of each role."""
    valid, expired, revoked = {}, {}, {}
    svc = app.extensions["gateway"]
    with svc.db.session() as s:
        for role in ROLES:
            name = PEER_NAME if role == "peer" else f"route-{role}"
            _, valid[role] = create_token(s, name, role, actor="test")
            row, expired[role] = create_token(s, name, role, actor="test",
                                              expires_in=timedelta(minutes=5))
            # as it stands ten minutes on: past its expiry
            s.execute(update(ApiToken).where(ApiToken.id == row.id)
                      .values(expires_at=row.expires_at - timedelta(minutes=10)))
            row, revoked[role] = create_token(s, name, role, actor="test")
            revoke_token(s, row.id, actor="test")
    return valid, expired, revoked


def _received_bundle(patient: dict, doc_uuid: str, study_uid: str,
                     instances: dict[str, str] | None = None) -> bytes:
    """A transaction Bundle from HOSPITAL for this gateway's own center: the patient, the
    Consent, a PDF note inline, an ImagingStudy, and a manifest naming the study's
    `instances` (SOP UID -> sha256) sent beside it by STOW-RS."""
    ref = f"urn:uuid:{uuid.uuid4()}"
    claims = example_claims(ISSUER, f"j-{secrets.token_hex(4)}", patient=patient,
                            disclosers=[{"id": HOSPITAL, "name": "Hospital", "endpoints": [
                                {"type": "pdf-folder", "address": "/x"}]}],
                            recipient={"id": SENDER_ORG, "name": "Center", "endpoint": {
                                "type": "gateway", "address": "http://127.0.0.1:1"}})
    consent = dict(claims["consent"], patient={"reference": ref})
    pdf = b"%PDF-1.4 " + patient["name"]["family"].encode()
    bin_url = f"urn:uuid:{uuid.uuid4()}"
    entries = [
        {"fullUrl": ref, "request": {"method": "POST", "url": "Patient"}, "resource": {
            "resourceType": "Patient", "birthDate": patient["birthDate"],
            "name": [{"family": patient["name"]["family"], "given": patient["name"]["given"]}],
            "identifier": [{"system": i["system"], "value": i["value"]}
                           for i in patient["identifiers"]]}},
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "request": {"method": "POST", "url": "Consent"},
         "resource": consent},
        {"fullUrl": f"urn:uuid:{doc_uuid}", "request": {"method": "POST", "url": "DocumentReference"},
         "resource": {"resourceType": "DocumentReference", "status": "current",
                      "subject": {"reference": ref}, "date": "2026-01-02T00:00:00Z",
                      "description": f"Note on {patient['name']['family']}",
                      "content": [{"attachment": {"contentType": "application/pdf", "url": bin_url,
                                                  "size": len(pdf), "title": "note.pdf"}}]}},
        {"fullUrl": bin_url, "request": {"method": "POST", "url": "Binary"}, "resource": {
            "resourceType": "Binary", "contentType": "application/pdf",
            "data": base64.b64encode(pdf).decode()}},
        {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "request": {"method": "POST", "url": "ImagingStudy"},
         "resource": {"resourceType": "ImagingStudy", "status": "available",
                      "subject": {"reference": ref},
                      "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
                      "numberOfSeries": 1, "numberOfInstances": 1}}]
    if instances:
        from gateway.exchange.manifest import MANIFEST_TYPE

        manifest = {"sources": {"pacs": {"delivered": [
            {"kind": "dicom", "origin": f"dicom://pacs/{sop}", "study": study_uid, "sha256": sha}
            for sop, sha in instances.items()]}}}
        man_url = f"urn:uuid:{uuid.uuid4()}"
        entries += [
            {"fullUrl": f"urn:uuid:{uuid.uuid4()}", "request": {"method": "POST", "url": "DocumentReference"},
             "resource": {"resourceType": "DocumentReference", "status": "current",
                          "subject": {"reference": ref}, "type": {"coding": [MANIFEST_TYPE]},
                          "content": [{"attachment": {"contentType": "application/json", "url": man_url}}]}},
            {"fullUrl": man_url, "request": {"method": "POST", "url": "Binary"}, "resource": {
                "resourceType": "Binary", "contentType": "application/json",
                "data": base64.b64encode(json.dumps(manifest).encode()).decode()}}]
    return json.dumps({"resourceType": "Bundle", "type": "transaction",
                       "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"},
                       "entry": entries}).encode()


def _png(text: str) -> bytes:
    """A 1x1 PNG carrying `text` in a tEXt chunk (a first page stand-in)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 1, 1, 8, 0, 0, 0, 0))
            + chunk(b"tEXt", b"Comment\0" + text.encode()) + chunk(b"IDAT", zlib.compress(b"\0\0"))
            + chunk(b"IEND", b""))


def _fax_in_review(config: dict, family: str, transfer_id: str, fax_number: str) -> str:
    """A fax dropped under a file name carrying the patient's name, matched to no transfer
    by itself and set aside for review as the fax connector does."""
    from connectors.fax.store import FaxStore, write_json

    options = config["sources"]["fax"]["options"]
    drop = Path(options["drop"])
    pdf = b"%PDF-1.4 fax of " + family.encode()
    raw = f"{family}-records.pdf".encode()
    (drop / raw.decode()).write_bytes(pdf)
    store = FaxStore(Path(options["store"]))
    fax_id = store.claim(drop, raw, {"source": "fax"})
    folder = store.path("claimed", fax_id)
    (folder / "document.pdf").write_bytes(pdf)
    (folder / "preview-1.png").write_bytes(_png(family))
    write_json(folder / "result.json", {
        "decision": "pending", "transfer_id": None, "match": "review",
        "reasons": ["no cover sheet code"], "candidates": [transfer_id], "cover_pages_removed": [],
        "pages": 1, "received_pages": 1, "sha256": hashlib.sha256(pdf).hexdigest(), "size": len(pdf),
        "original_sha256": hashlib.sha256(pdf).hexdigest(), "original_size": len(pdf),
        "original_media_type": "application/pdf", "fax_number": fax_number,
        "received_at": "2026-01-02T00:00:00+00:00", "text_source": "none"})
    store.move(fax_id, "claimed", "review")
    return fax_id


NOTIFICATION_ID = "n" + "0" * 31


def _subscription_and_notification(app, case_id: str) -> str:
    """A FHIR Subscription held for the case at its source (as the engine stores one once
    the source took it), and a notification that failed for good; returns the
    subscription's id (the one in its hook URL)."""
    from gateway.engine.subscriptions import secret_hash
    from gateway.storage.models import FhirSubscription, Notification

    sid = secrets.token_urlsafe(24)
    with app.extensions["gateway"].db.session() as s:
        s.add(FhirSubscription(id=sid, owner=case_id, source="records", patient_ref=secrets.token_hex(8),
                               topic="http://example.org/topics/new-results",
                               secret_sha256=secret_hash(secrets.token_urlsafe(24)), payload="id-only",
                               heartbeat_s=60, status="active"))
        s.add(Notification(id=NOTIFICATION_ID, channel="webhook:ops", event_type="case.started",
                           case_id=case_id, payload={"case": case_id}, state="dead", attempts=5,
                           last_error="HTTP 503"))
    return sid


def _center_config(tmp_path: Path) -> dict:
    """A center whose providers (a peer gateway, a fax-only office) listen nowhere."""
    (tmp_path / "route-center-token").write_text("not-used")
    (tmp_path / "route-fax-out").mkdir()
    return {"name": "Route Test Center", "issuer": "https://center.route.test/intake",
            "fax_outbox": str(tmp_path / "route-fax-out"), "return_fax": "+1 555 0199",
            "providers": {
                "hospital": {"name": "Hospital", "kind": "gateway", "organization": HOSPITAL,
                             "endpoints": [{"type": "pdf-folder", "address": "/x"}],
                             "base_url": "http://127.0.0.1:9", "token_file":
                                 str(tmp_path / "route-center-token")},
                "office": {"name": "Records Office", "kind": "fax", "organization": "org-office",
                           "fax_number": "+1 555 0101",
                           "endpoints": [{"type": "fax", "address": "+1 555 0101"}]}}}


def _center_request(app) -> dict:
    """A patient's request, made as the form makes it (not sent: no task runs), and the
    status link mailed to the patient."""
    from gateway.center import requests as reqs
    from gateway.center import tokens
    from tests.center.conftest import form_for

    svc = app.extensions["gateway"]
    patient = _patient()
    form = form_for(family_name=patient["name"]["family"], given_name=patient["name"]["given"][0],
                    birth_date=patient["birthDate"], identifier_value=patient["identifiers"][0]["value"],
                    email=f"{_word().lower()}@patient.example", providers=["hospital", "office"],
                    questions=f"Question {_word()}")
    row = reqs.create(svc, {**form, "form_token": reqs.new_form(svc)}, actor="test")
    with svc.db.session() as s:
        link = tokens.mint(s, "status", 3600, row.id)
        s.commit()
    return {"request_id": row.id, "link": link, "form": form,
            "leaks": [form["family_name"], form["given_name"], form["birth_date"],
                      form["identifier_value"], form["email"], form["questions"], link]}


def build(config: dict, tmp_path: Path, sign, claims_for, center: bool = False) -> World:
    """Make the gateway from `config` (the sender's test settings) and fill its store
    through the API, as a real deployment would be filled. Peers' keys come from files and
    no peer listens: nothing a request does here reaches out of the process. With
    `center`, it is a second-opinion center too, holding one patient's request."""
    for name in ("hospital", "center"):
        keys = SigningKeys(tmp_path / f"route-{name}-keys")
        keys.ensure()
        (tmp_path / f"route-{name}-jwks.json").write_text(json.dumps(keys.jwks()))
    hospital = SigningKeys(tmp_path / "route-hospital-keys")
    peers = {name: {**peer, "jwks_file": str(tmp_path / "route-center-jwks.json")}
             for name, peer in config["peers"].items()}
    config = {**config, "mode": "both", "peers": peers, "senders": {PEER_NAME: {
        "organization": HOSPITAL, "jwks_file": str(tmp_path / "route-hospital-jwks.json")}}}
    if center:
        config["center"] = _center_config(tmp_path)
    app = create_app(config)
    svc = app.extensions["gateway"]
    svc.keys.ensure()
    from gateway.engine.faxes import ensure_cover_key

    ensure_cover_key(svc.settings.keys_dir)
    valid, expired, revoked = _tokens(app)
    client = app.test_client()
    operator, peer = bearer(valid["operator"]), bearer(valid["peer"])

    patient = _patient()
    auth_id = f"auth-{secrets.token_hex(6)}"
    r = client.post("/authorizations", json={"jws": sign(claims_for(auth_id, patient=patient))},
                    headers=operator)
    assert r.status_code == 201, r.get_json()
    r = client.post("/transfers", json={"authorization": auth_id, "sources": ["records"],
                                        "recipient": "center"}, headers=operator)
    assert r.status_code == 202, r.get_json()
    transfer_id = r.get_json()["id"]

    from tests.dicom.dicom_studies import make_study

    study = make_study(tmp_path / "route-study", 1, 1, rows=8, cols=8,
                       patient_id=patient["identifiers"][0]["value"],
                       patient_name=f"{patient['name']['family']}^{patient['name']['given'][0]}")
    boundary = secrets.token_hex(8)
    stow = (f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
            + study.files[0].read_bytes() + f"\r\n--{boundary}--\r\n".encode())
    r = client.post(f"/dicomweb/studies/{study.study_uid}", data=stow, headers={
        **peer, "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}'})
    assert r.status_code == 200, r.get_data(as_text=True)
    doc_uuid, study_uid, [sop_uid] = str(uuid.uuid4()), study.study_uid, study.sop_uids
    # held as received, its preamble zeroed (it could hide another file format)
    sha = hashlib.sha256(bytes(128) + study.files[0].read_bytes()[128:]).hexdigest()
    body = _received_bundle(patient, doc_uuid, study_uid, {sop_uid: sha})
    r = client.post("/fhir", data=body, content_type="application/fhir+json", headers={
        **peer, "Idempotency-Key": secrets.token_hex(8),
        SIGNATURE_HEADER: sign_bundle(hospital, body, "x")})
    assert r.status_code == 200, r.get_json()
    r = client.get("/inbox", headers=bearer(valid["recipient"]))
    [received] = r.get_json()["received"]

    binary_id = secrets.token_hex(16)
    r = client.put(f"/fhir/Binary/{binary_id}", data=b"%PDF-1.4 " + patient["name"]["given"][0].encode(),
                   content_type="application/pdf", headers=peer)
    assert r.status_code == 201, r.get_json()

    [case] = client.get("/cases", headers=operator).get_json()["cases"]
    sid = _subscription_and_notification(app, case["id"])
    fax_number = f"+1 555 {secrets.randbelow(10**7):07d}"
    fax_id = _fax_in_review(config, patient["name"]["family"], transfer_id, fax_number)
    ids = {"transfer_id": transfer_id, "auth_id": auth_id, "received_id": received["id"],
           "doc_id": doc_uuid, "study_uid": study_uid, "study": study_uid,
           "sop_uid": sop_uid, "series_uid": next(iter(study.series)), "n": "1",
           "binary_id": binary_id, "fax_id": fax_id, "seq": "1",
           "case_id": case["id"], "source": "records", "sid": sid,
           "notification_id": NOTIFICATION_ID}
    leaks = [patient["name"]["family"], patient["name"]["given"][0], patient["birthDate"],
             patient["identifiers"][0]["value"], transfer_id, auth_id, received["id"], doc_uuid,
             study_uid, sop_uid, binary_id, fax_id, case["id"], sid, fax_number, received["bundle"], received["sha256"]]
    made = {}
    if center:
        made = _center_request(app)
        ids["request_id"] = made["request_id"]
        leaks += made["leaks"]
    return World(app=app, tokens=valid, expired=expired, revoked=revoked, ids=ids, leaks=leaks,
                 config=config, center=made)
