"""Bad input to the center: every form field wrong in turn, a replayed submission, a
forged, expired or replaced status link. Each gets a clear message; nothing is signed,
stored or sent."""
from __future__ import annotations

import functools
from datetime import date, timedelta

import pytest
from sqlalchemy import func, select

from gateway.center import tasks
from gateway.storage.models import AuditEvent, CenterRequest, CenterToken, utcnow
from tests.center.conftest import form_for
from tests.helpers import racing_the_write

TODAY = date.today()
WRONG = [  # (field, bad value, words the message must hold)
    ("family_name", "", "family name"),
    ("family_name", "x" * 201, "longer than 200"),
    ("given_name", "Avery\x07", "characters"),
    ("birth_date", "01/02/1970", "date like"),
    ("birth_date", "1970-02-30", "date like"),
    ("birth_date", (TODAY + timedelta(days=3)).isoformat(), "in the past"),
    ("identifier_system", "", "who issued"),
    ("identifier_value", "", "identifier"),
    ("email", "avery.example", "email address"),
    ("email", "", "email address"),
    ("providers", [], "at least one"),
    ("providers", ["nowhere"], "from the list"),
    ("providers", ["office", "office"], "each once"),
    ("data_classes", [], "which kinds"),
    ("data_classes", ["gossip"], "from the list"),
    ("data_classes", ["all", "labs"], "not both"),
    ("date_start", "last year", "date like"),
    ("date_end", "1999-01-01", "not be before"),  # with date_start below
    ("purpose", "", "purpose"),
    ("expiration_date", "", "permission ends"),
    ("expiration_date", TODAY.isoformat(), "after today"),
    ("expiration_date", (TODAY + timedelta(days=999)).isoformat(), "within 180 days"),
    ("ack_revoke", "", "tick the box"),
    ("ack_conditioning", "off", "tick the box"),
    ("ack_redisclosure", None, "tick the box"),
    ("questions", "q" * 4001, "longer than 4000"),
    ("signed_by", "neighbour", "who signs"),
    ("signature_name", "", "typed signature"),
    ("signature_date", (TODAY - timedelta(days=5)).isoformat(), "must be today"),
    ("representative_authority", "", "authority"),  # with signed_by representative
]


def _form_token(client, staff) -> str:
    r = client.post("/center/forms", headers=staff)
    assert r.status_code == 201
    return r.get_json()["formToken"]


def _nothing_made(app, tmp_path) -> None:
    with app.extensions["gateway"].db.session() as s:
        assert s.scalar(select(func.count()).select_from(CenterRequest)) == 0
    assert list((tmp_path / "fax-out").iterdir()) == []


@pytest.mark.parametrize("name,value,words", WRONG, ids=[f"{w[0]}-{i}" for i, w in enumerate(WRONG)])
def test_each_wrong_field_is_named_and_nothing_is_signed(center_app, staff, tmp_path, name, value,
                                                         words):
    client = center_app.test_client()
    form = form_for(**{name: value})
    if name == "date_end":
        form["date_start"] = "2000-01-01"
    if name == "representative_authority":
        form["signed_by"] = "representative"
    token = _form_token(client, staff)
    r = client.post("/center/requests", json={**form, "form_token": token}, headers=staff)
    assert r.status_code == 400, r.get_json()
    issues = r.get_json()["issue"]
    assert [i["expression"] for i in issues] == [[name]]
    assert words in issues[0]["diagnostics"]
    if isinstance(value, str) and len(value) > 3:
        assert value not in issues[0]["diagnostics"]  # the message never echoes the value
    _nothing_made(center_app, tmp_path)
    # the token was not used up: the corrected form goes through
    r = client.post("/center/requests", json={**form_for(), "form_token": token}, headers=staff)
    assert r.status_code == 201, r.get_json()


def test_a_replayed_submission_signs_and_sends_nothing_more(center_app, staff, tmp_path):
    client = center_app.test_client()
    body = {**form_for(), "form_token": _form_token(client, staff)}
    first = client.post("/center/requests", json=body, headers=staff)
    assert first.status_code == 201
    again = client.post("/center/requests", json=body, headers=staff)
    assert again.status_code == 409
    assert "already submitted" in again.get_json()["issue"][0]["diagnostics"]
    with center_app.extensions["gateway"].db.session() as s:
        assert s.scalar(select(func.count()).select_from(CenterRequest)) == 1
    for bad in ({**body, "form_token": "rgf_forged"}, {k: v for k, v in body.items() if k != "form_token"}):
        r = client.post("/center/requests", json=bad, headers=staff)
        assert r.status_code == 400 and "form token" in r.get_json()["issue"][0]["diagnostics"]
    # a form left open past its lifetime is refused too
    token = _form_token(client, staff)
    with center_app.extensions["gateway"].db.session() as s:
        for row in s.scalars(select(CenterToken).filter_by(purpose="form", used_at=None)):
            row.expires_at = utcnow() - timedelta(seconds=1)
    r = client.post("/center/requests", json={**form_for(), "form_token": token}, headers=staff)
    assert r.status_code == 400 and "expired" in r.get_json()["issue"][0]["diagnostics"]


def test_forged_expired_and_replaced_status_links_are_refused(center_app, staff, tmp_path):
    client = center_app.test_client()
    svc = center_app.extensions["gateway"]
    body = {**form_for(), "form_token": _form_token(client, staff)}
    made = client.post("/center/requests", json=body, headers=staff).get_json()
    from gateway.center import tokens

    with svc.db.session() as s:
        link = tokens.mint(s, "status", 3600, made["id"])
    ok = client.get("/center/status", headers={"X-Status-Token": link})
    assert ok.status_code == 200 and ok.get_json()["reference"].startswith("SO-")
    assert [p["status"] for p in ok.get_json()["providers"]] == ["pending", "pending"]
    for forged in ("rgs_" + "A" * 43, link[:-2] + "xx", "", "rgf_" + link[4:]):
        r = client.get("/center/status", headers={"X-Status-Token": forged})
        assert r.status_code == 403 and "not valid" in r.get_json()["issue"][0]["diagnostics"]
        r = client.post("/center/status/revoke", headers={"X-Status-Token": forged})
        assert r.status_code == 403
    with svc.db.session() as s:
        newer = tokens.mint(s, "status", 3600, made["id"])  # replaces the first link
    assert client.get("/center/status", headers={"X-Status-Token": link}).status_code == 403
    with svc.db.session() as s:
        s.get(CenterToken, tokens._digest(newer)).expires_at = utcnow() - timedelta(seconds=1)
    assert client.get("/center/status", headers={"X-Status-Token": newer}).status_code == 403
    with svc.db.session() as s:
        assert s.get(CenterRequest, made["id"]).state == "open"  # nothing revoked
        types = [e.type for e in s.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
        assert types.count("center.status.viewed") == 1 and types.count("center.status.refused") == 10
        # only hashes of links are stored
        assert all(len(t.sha256) == 64 and link not in t.sha256 for t in s.scalars(select(CenterToken)))


def test_the_fax_request_carries_the_signed_form_and_a_cover_sheet(center_app, staff, tmp_path):
    import io

    import pypdfium2

    from connectors.fax.cover import decode_cover

    client = center_app.test_client()
    svc = center_app.extensions["gateway"]
    made = client.post("/center/requests", json={**form_for(), "form_token": _form_token(client, staff)},
                       headers=staff).get_json()
    office = next(p for p in made["providers"] if p["name"] == "office")
    assert tasks.send_now(svc, office["id"]) == "sent"
    assert tasks.send_now(svc, office["id"]) == "sent"  # idempotent: not written twice
    [sent] = list((tmp_path / "fax-out").iterdir())
    pages = pypdfium2.PdfDocument(io.BytesIO(sent.read_bytes()))
    text = "".join(pages[i].get_textpage().get_text_range() for i in range(len(pages)))
    assert "Authorization to release health information" in text
    assert "Is the operation needed?" in text and "Records Office" in text
    key = (svc.settings.keys_dir / "fax-cover.key").read_bytes().strip()
    codes = [decode_cover(pages[i].render(scale=2).to_pil(), key) for i in range(len(pages))]
    assert [c.transfer_id for c in codes if c and c.valid] == [office["id"]]
    # the hospital cannot be reached: a transient failure, retried, recorded on the row
    hospital = next(p for p in made["providers"] if p["name"] == "hospital")
    from gateway.errors import ProviderUnavailable

    with pytest.raises(ProviderUnavailable):
        tasks.send_now(svc, hospital["id"])
    view = client.get(f"/center/requests/{made['id']}", headers=staff).get_json()
    assert next(p for p in view["providers"] if p["name"] == "hospital")["error"].startswith("http://")


def test_a_provider_that_does_not_answer_is_reminded_then_overdue(center_app, staff, tmp_path):
    from gateway.center import progress

    client = center_app.test_client()
    svc = center_app.extensions["gateway"]
    made = client.post("/center/requests", json={**form_for(providers=["office"]),
                                                 "form_token": _form_token(client, staff)},
                       headers=staff).get_json()
    [office] = made["providers"]
    assert tasks.send_now(svc, office["id"]) == "sent"
    now = utcnow()
    assert progress.advance(svc, made["id"], now + timedelta(days=1)) == []  # not due yet
    # a third of the fax default (10 days) later: reminded, the request written again
    [(provider_id, reminder)] = progress.advance(svc, made["id"], now + timedelta(days=3.5))
    assert (provider_id, reminder) == (office["id"], 1)
    tasks.send_now(svc, provider_id, reminder)
    letters = sorted(p.name for p in (tmp_path / "fax-out").iterdir())
    assert len(letters) == 2 and letters[1].endswith("-office-1.pdf")
    # past the deadline with no answer: overdue, no more reminders; the patient sees it late
    assert progress.advance(svc, made["id"], now + timedelta(days=11)) == []
    view = client.get(f"/center/requests/{made['id']}", headers=staff).get_json()
    assert view["providers"][0]["status"] == "overdue" and view["state"] == "open"
    # a late fax still answers it: the request completes
    with svc.db.session() as s:
        assert progress.take_fax(s, office["id"], "fax-late", None)
        assert not progress.take_fax(s, office["id"], "fax-late", None)  # counted once
    progress.advance(svc, made["id"], now + timedelta(days=12))
    view = client.get(f"/center/requests/{made['id']}", headers=staff).get_json()
    assert view["state"] == "complete" and view["providers"][0]["arrived"]["faxes"] == 1


def test_a_revocation_while_a_pass_settles_the_request_wins(center_app, staff):
    """The patient revokes while the periodic pass is writing the request's expiry: the
    request ends revoked, the expiry recorded before the revocation."""
    from gateway.center import progress
    from gateway.center import requests as center_requests

    client = center_app.test_client()
    svc = center_app.extensions["gateway"]
    made = client.post("/center/requests", json={**form_for(providers=["office"]),
                                                 "form_token": _form_token(client, staff)},
                       headers=staff).get_json()
    revoke = functools.partial(center_requests.revoke, svc, made["id"], "patient")
    with racing_the_write(CenterRequest, made["id"], revoke) as started:
        progress.advance(svc, made["id"], utcnow() + timedelta(days=400))  # past its expiry
    assert len(started) == 1  # the revocation did run inside the gap
    view = client.get(f"/center/requests/{made['id']}", headers=staff).get_json()
    assert view["state"] == "revoked" and view["revokedAt"]
    with svc.db.session() as s:
        events = s.scalars(select(AuditEvent.type).where(AuditEvent.type.like("center.request.%"))
                           .order_by(AuditEvent.seq)).all()
    assert events[-2:] == ["center.request.expired", "center.request.revoked"]
