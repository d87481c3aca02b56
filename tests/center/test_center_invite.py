"""A patient's own way in: the staff invite a patient by email (the real SMTP test
server receives it); the link opens the request form without a sign-in; its submission
is signed and sent like the staff's, once only; forged, expired and used links are
refused with a message page and nothing is signed or sent."""
from __future__ import annotations

import email
import re
from datetime import timedelta

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select, update

from gateway.center import tasks
from gateway.storage.models import AuditEvent, CenterRequest, CenterToken, utcnow
from tests.center.conftest import form_for
from tests.helpers import make_token

PATIENT = "avery@patient.example"


@pytest.fixture
def app(mailing_app):
    return mailing_app


def _body(mail, n: int) -> str:
    assert len(mail.messages) >= n
    return email.message_from_bytes(mail.messages[n - 1]["content"]).get_payload(decode=True).decode()


def _staff_client(app):
    """A browser signed in as the center's staff (through the sign-in form)."""
    client = app.test_client()
    page = client.get("/ui/sign-in").get_data(as_text=True)
    nonce = re.search(r'name="form_nonce" value="([^"]+)"', page).group(1)
    r = client.post("/ui/sign-in", data={"token": make_token(app, "operator"), "form_nonce": nonce})
    assert r.status_code == 303, r.get_data(as_text=True)
    return client


def _invite_by_web(app, mail) -> str:
    staff = _staff_client(app)
    page = staff.get("/ui/requests/new").get_data(as_text=True)
    assert "Email the patient an invitation" in page
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page).group(1)
    r = staff.post("/ui/requests/invite", data={"email": PATIENT, "csrf_token": csrf})
    assert r.status_code == 303 and "done=invited" in r.headers["Location"]
    assert mail.messages[-1]["to"] == [PATIENT] and mail.messages[-1]["tls"]
    link = re.search(r"https://center\.example(/ui/invite\?t=\S+)", _body(mail, len(mail.messages)))
    assert link and PATIENT not in link.group(1) and "Avery" not in link.group(1)
    return link.group(1)


def _open(client, link: str):
    r = client.get(link)
    assert r.status_code == 303 and r.headers["Location"].endswith("/ui/invite")  # token left the URL
    page = client.get("/ui/invite")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assert "Request a second opinion" in html and "Sign and send the request" in html
    assert "Email the patient an invitation" not in html  # the staff's box is theirs alone
    return html


def _fields(html: str) -> dict:
    return {"form_token": re.search(r'name="form_token" value="([^"]+)"', html).group(1),
            "form_nonce": re.search(r'name="form_nonce" value="([^"]+)"', html).group(1)}


def _count(app, model) -> int:
    with app.extensions["gateway"].db.session() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_an_invited_patient_fills_in_the_form_once_and_lands_on_the_status_page(app, mail, tmp_path):
    svc = app.extensions["gateway"]
    link = _invite_by_web(app, mail)
    patient = app.test_client()
    html = _open(patient, link)
    assert "revoke this authorization" in html.lower() or "revoke" in html.lower()  # 164.508(c)
    # a wrong field: named, nothing signed, the invitation still usable
    r = patient.post("/ui/invite", data={**form_for(family_name=""), **_fields(html)})
    assert r.status_code == 400 and "family name" in r.get_data(as_text=True)
    assert _count(app, CenterRequest) == 0
    html = r.get_data(as_text=True)
    # without the page's own form nonce (another site's form): refused, nothing made
    r = patient.post("/ui/invite", data={**form_for(), "form_token": _fields(html)["form_token"],
                                         "form_nonce": "forged"})
    assert r.status_code == 403 and _count(app, CenterRequest) == 0
    r = patient.post("/ui/invite", data={**form_for(), **_fields(html)})
    assert r.status_code == 303 and r.headers["Location"].endswith("/ui/my-request?done=request-sent")
    status = patient.get(r.headers["Location"])
    assert status.status_code == 200
    assert "Your request is signed and sent" in status.get_data(as_text=True)
    assert "Testperson" not in status.get_data(as_text=True)
    with svc.db.session() as s:
        [row] = s.scalars(select(CenterRequest)).all()
        assert row.jws.count(".") == 2 and row.created_by == "patient"
        assert row.patient["email"] == PATIENT
        office = next(p.id for p in row.providers if p.name == "office")
        types = [e.type for e in s.scalars(select(AuditEvent).order_by(AuditEvent.seq))]
        assert types.count("center.invite.created") == 1 and types.count("center.invite.used") == 1
        for e in s.scalars(select(AuditEvent).where(AuditEvent.type.like("center.invite.%"))):
            assert PATIENT not in str(e.detail) and "Testperson" not in str(e.detail)
    # the status link was mailed too, to the address on the form
    body = _body(mail, 2)
    assert mail.messages[1]["to"] == [PATIENT] and "/ui/my-request?t=rgs_" in body
    # sent: the records office's letter with the signed form is in the fax outbox
    assert tasks.send_now(svc, office) == "sent"
    assert len(list((tmp_path / "fax-out").iterdir())) == 1
    # the same link again (a replay, or a second submission): refused, nothing new
    again = app.test_client()
    r = again.get(link)
    assert r.status_code == 410 and "already used" in r.get_data(as_text=True)
    r = patient.post("/ui/invite", data={**form_for(), **_fields(html)})
    assert r.status_code in (404, 410) and _count(app, CenterRequest) == 1
    patient.set_cookie("rgw_invite", link.split("t=")[1], path="/ui/invite")
    r = patient.post("/ui/invite", data={**form_for(), **_fields(html)})
    assert r.status_code == 410 and _count(app, CenterRequest) == 1
    assert len(mail.messages) == 2


def test_forged_and_expired_invitations_are_refused(app, mail):
    link = _invite_by_web(app, mail)
    client = app.test_client()
    r = client.get("/ui/invite?t=rgi_" + "A" * 43)
    assert r.status_code == 404 and "not valid" in r.get_data(as_text=True)
    assert "rgi_" not in r.get_data(as_text=True)
    assert client.get("/ui/invite").status_code == 404  # no invitation at all
    svc = app.extensions["gateway"]
    with svc.db.session() as s:
        s.execute(update(CenterToken).where(CenterToken.purpose == "invite")
                  .values(expires_at=utcnow() - timedelta(seconds=1)))
        s.commit()
    r = client.get(link)
    assert r.status_code == 410 and "expired" in r.get_data(as_text=True)
    assert _count(app, CenterRequest) == 0
    with svc.db.session() as s:  # only the invitation's hash is stored
        token = link.split("t=")[1]
        assert all(token not in t.sha256 for t in s.scalars(select(CenterToken)))


def test_the_cli_invites_and_refuses_a_bad_address(app, mail, tmp_path, monkeypatch):
    from gateway.cli import requests as cli_requests

    monkeypatch.setattr(cli_requests, "services", lambda: app.extensions["gateway"])
    runner = CliRunner()
    r = runner.invoke(cli_requests.requests, ["invite", "--email", PATIENT])
    assert r.exit_code == 0 and r.output.strip() == "invitation sent"
    assert mail.messages[-1]["to"] == [PATIENT] and "/ui/invite?t=rgi_" in _body(mail, 1)
    r = runner.invoke(cli_requests.requests, ["invite", "--email", "not-an-address"])
    assert r.exit_code != 0 and len(mail.messages) == 1
