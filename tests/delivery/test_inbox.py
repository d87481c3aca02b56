"""The center's inbox in process: recipient role only, each center sees its own bundles,
documents and studies are listed and served, opening signs an "opened" receipt."""
from __future__ import annotations

import base64
import json

from gateway.trust.keys import verify_jws
from gateway.trust.receipts import OPENED_TYP

from tests.helpers import RECEIVER_ORG, bearer, make_token
from tests.test_receive import PATIENT, bundle, post

PDF = b"%PDF-1.4 synthetic"


def rich_bundle() -> bytes:
    data = json.loads(bundle(0))
    doc_url, bin_url = "urn:uuid:11111111-0000-4000-8000-000000000001", "urn:uuid:11111111-0000-4000-8000-000000000002"
    data["entry"] += [
        {"fullUrl": doc_url, "request": {"method": "POST", "url": "DocumentReference"}, "resource": {
            "resourceType": "DocumentReference", "status": "current",
            "identifier": [{"system": "urn:records-gateway:sha256", "value": "ab" * 32}],
            "type": {"coding": [{"system": "http://loinc.org", "code": "11506-3", "display": "Progress note"}]},
            "subject": {"reference": PATIENT}, "date": "2026-01-02T00:00:00Z",
            "content": [{"attachment": {"contentType": "application/pdf", "url": bin_url,
                                        "size": len(PDF), "title": "note.pdf"}}]}},
        {"fullUrl": bin_url, "request": {"method": "POST", "url": "Binary"}, "resource": {
            "resourceType": "Binary", "contentType": "application/pdf",
            "data": base64.b64encode(PDF).decode()}},
        {"fullUrl": "urn:uuid:11111111-0000-4000-8000-000000000003",
         "request": {"method": "POST", "url": "ImagingStudy"}, "resource": {
             "resourceType": "ImagingStudy", "status": "available", "subject": {"reference": PATIENT},
             "identifier": [{"system": "urn:dicom:uid", "value": "urn:oid:1.2.3.4.5"}],
             "modality": [{"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}],
             "numberOfSeries": 1, "numberOfInstances": 3}}]
    return json.dumps(data).encode()


def test_inbox_lists_serves_and_marks_opened(receiver, peer, sender_keys):
    client = receiver.test_client()
    assert post(client, peer, rich_bundle(), sender_keys).status_code == 200
    staff = bearer(make_token(receiver, "recipient", "dr-staff"))  # this gateway's own center
    [item] = client.get("/inbox", headers=staff).get_json()["received"]
    assert item["recipient"] == RECEIVER_ORG and item["openedAt"] is None
    docs = client.get(f"/inbox/{item['id']}/documents", headers=staff).get_json()["documents"]
    assert [(d["type"], d["size"], d["contentType"]) for d in docs] == [
        ("Progress note", len(PDF), "application/pdf")]
    content = client.get(docs[0]["content"], headers=staff)
    assert content.data == PDF and content.mimetype == "application/pdf"
    [study] = client.get(f"/inbox/{item['id']}/studies", headers=staff).get_json()["studies"]
    assert study["studyInstanceUid"] == "urn:oid:1.2.3.4.5" and study["instances"] == 3
    opened = client.post(f"/inbox/{item['id']}/opened", headers=staff).get_json()
    assert opened["openedBy"] == "dr-staff" and opened["openedAt"]
    assert opened["senderNotified"] is False  # no way back to this sender configured
    svc = receiver.extensions["gateway"]
    from gateway.storage.models import ReceivedBundle

    with svc.db.session() as s:
        jws = s.get(ReceivedBundle, item["id"]).opened_receipt_jws
    claims = verify_jws(jws, svc.keys.jwks(), OPENED_TYP)
    assert claims["openedBy"] == "dr-staff" and claims["bundle"] == item["bundle"]
    again = client.post(f"/inbox/{item['id']}/opened", headers=staff).get_json()
    assert again["openedAt"] == opened["openedAt"]  # the first opening stands


def test_each_center_sees_its_own_and_only_recipients_read(receiver, peer, sender_keys):
    client = receiver.test_client()
    assert post(client, peer, rich_bundle(), sender_keys).status_code == 200
    own = bearer(make_token(receiver, "recipient"))
    [item] = client.get("/inbox", headers=own).get_json()["received"]
    from gateway.trust.tokens import create_token

    with receiver.extensions["gateway"].db.session() as s:
        _, plain = create_token(s, "other-staff", "recipient", "test", organization="org-other-center")
    other = bearer(plain)
    assert client.get("/inbox", headers=other).get_json()["received"] == []
    for path in ("bundle", "documents", "studies"):
        assert client.get(f"/inbox/{item['id']}/{path}", headers=other).status_code == 404
    assert client.post(f"/inbox/{item['id']}/opened", headers=other).status_code == 404
    operator = bearer(make_token(receiver, "operator"))
    assert client.get("/inbox", headers=operator).status_code == 403
    assert client.get("/inbox", headers=peer).status_code == 403


def test_documents_are_served_as_sandboxed_attachments_of_allowed_types(receiver, peer, sender_keys):
    """A sender names a document's content type: text/html (or SVG, or a script) must never
    render in the gateway's origin. Allowed types go as they are, others as octet-stream,
    all as attachments under a sandboxing Content-Security-Policy."""
    data = json.loads(rich_bundle())
    html = b"<html><script>fetch('/inbox')</script></html>"
    doc_url, bin_url = ("urn:uuid:11111111-0000-4000-8000-000000000004",
                        "urn:uuid:11111111-0000-4000-8000-000000000005")
    data["entry"] += [
        {"fullUrl": doc_url, "request": {"method": "POST", "url": "DocumentReference"}, "resource": {
            "resourceType": "DocumentReference", "status": "current",
            "subject": {"reference": PATIENT}, "date": "2026-01-03T00:00:00Z",
            "content": [{"attachment": {"contentType": "text/html", "url": bin_url,
                                        "size": len(html), "title": "page.html"}}]}},
        {"fullUrl": bin_url, "request": {"method": "POST", "url": "Binary"}, "resource": {
            "resourceType": "Binary", "contentType": "text/html",
            "data": base64.b64encode(html).decode()}}]
    client = receiver.test_client()
    assert post(client, peer, json.dumps(data).encode(), sender_keys).status_code == 200
    staff = bearer(make_token(receiver, "recipient", "dr-staff"))
    [item] = client.get("/inbox", headers=staff).get_json()["received"]
    docs = client.get(f"/inbox/{item['id']}/documents", headers=staff).get_json()["documents"]
    served = {d["contentType"]: client.get(d["content"], headers=staff) for d in docs}
    page, pdf = served["text/html"], served["application/pdf"]
    assert page.data == html and page.mimetype == "application/octet-stream"
    assert pdf.data == PDF and pdf.mimetype == "application/pdf"
    for response in (page, pdf):
        assert response.headers["Content-Security-Policy"] == "sandbox"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Disposition"].startswith("attachment; filename=")
    assert page.headers["Content-Disposition"].endswith('.bin"')
