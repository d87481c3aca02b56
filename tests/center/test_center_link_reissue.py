"""Staff reissue a patient's status link (the page's button, the API, the command line):
the previous link stops working at once and shows the "not valid" page, the new one
arrives by email over SMTP (the real test server) and opens the status page, and each
reissue is audited without the link or the address. Another role, or staff of another
organization, cannot do it; a mail that cannot go leaves no usable new link."""
from __future__ import annotations

import re

from click.testing import CliRunner
from sqlalchemy import select

from gateway.center import requests as reqs
from gateway.center import tasks, tokens
from gateway.storage.models import AuditEvent, CenterToken
from gateway.trust.tokens import create_token
from tests.center.conftest import form_for
from tests.center.test_center_invite import PATIENT, _body
from tests.helpers import bearer, make_token

NOT_VALID = "this status link is not valid: it may have expired or been replaced"


def _request(app) -> str:
    """A request whose first status link was mailed (message 1)."""
    svc = app.extensions["gateway"]
    row = reqs.create(svc, {**form_for(email=PATIENT), "form_token": reqs.new_form(svc)},
                      actor="test")
    assert tasks.mail_link_now(svc, row.id)
    return row.id


def _link(mail, n: int) -> str:
    return re.search(r"/ui/my-request\?t=(rgs_[A-Za-z0-9_-]+)", _body(mail, n)).group(1)


def _signed_in(app, token: str):
    client = app.test_client()
    page = client.get("/ui/sign-in").get_data(as_text=True)
    nonce = re.search(r'name="form_nonce" value="([^"]+)"', page).group(1)
    r = client.post("/ui/sign-in", data={"token": token, "form_nonce": nonce})
    assert r.status_code == 303, r.get_data(as_text=True)
    home = client.get("/ui/", follow_redirects=True).get_data(as_text=True)
    return client, re.search(r'name="csrf-token" content="([^"]+)"', home).group(1)


def _status_page(app, link: str):
    """What the patient sees from the emailed link (a fresh browser)."""
    client = app.test_client()
    r = client.get(f"/ui/my-request?t={link}")
    assert r.status_code == 303 and "t=" not in r.headers["Location"]
    return client.get("/ui/my-request")


def _events(app, kind: str) -> list[AuditEvent]:
    with app.extensions["gateway"].db.session() as s:
        return list(s.scalars(select(AuditEvent).filter_by(type=kind).order_by(AuditEvent.seq)))


def test_staff_reissue_the_link_from_the_request_page(mailing_app, mail):
    app = mailing_app
    request_id = _request(app)
    first = _link(mail, 1)
    assert _status_page(app, first).status_code == 200
    client, csrf = _signed_in(app, make_token(app, "operator", "intake-desk"))
    page = client.get(f"/ui/requests/{request_id}").get_data(as_text=True)
    assert "Email a new status link" in page and f"/ui/requests/{request_id}/status-link" in page

    r = client.post(f"/ui/requests/{request_id}/status-link", data={"csrf_token": csrf})
    assert r.status_code == 303 and r.headers["Location"].endswith("done=link-reissued")
    shown = client.get(r.headers["Location"]).get_data(as_text=True)
    assert "A new status link was emailed to the patient" in shown

    assert len(mail.messages) == 2
    sent = mail.messages[1]
    assert sent["to"] == [PATIENT] and sent["tls"]
    second = _link(mail, 2)
    assert second != first and reqs.reference(request_id) in _body(mail, 2)
    old = _status_page(app, first)
    assert old.status_code == 403 and NOT_VALID in old.get_data(as_text=True)
    new = _status_page(app, second)
    assert new.status_code == 200 and "Your second-opinion request" in new.get_data(as_text=True)
    # the API answers the same: the old token refused, the new one opens the status
    api = app.test_client()
    assert api.get("/center/status", headers={"X-Status-Token": first}).status_code == 403
    got = api.get("/center/status", headers={"X-Status-Token": second})
    assert got.status_code == 200 and got.get_json()["reference"] == reqs.reference(request_id)

    [event] = _events(app, "center.status-link.reissued")
    assert event.actor == "intake-desk" and event.role == "operator"
    assert event.detail["request"] == request_id
    assert event.detail["link"] == tokens._digest(second)[:16]
    assert len(_events(app, "center.status-link.mailed")) == 2
    said = " ".join(str(e.detail) for e in _events(app, "center.status-link.reissued"))
    assert PATIENT not in said and second not in said and first not in said
    with app.extensions["gateway"].db.session() as s:
        live = [t for t in s.scalars(select(CenterToken).filter_by(request_id=request_id,
                                                                   purpose="status"))
                if t.revoked_at is None]
        assert [t.sha256 for t in live] == [tokens._digest(second)]


def test_another_role_or_organization_cannot_reissue(mailing_app, mail):
    app = mailing_app
    request_id = _request(app)
    first = _link(mail, 1)
    svc = app.extensions["gateway"]
    with svc.db.session() as s:
        _, other_center = create_token(s, "other-center", "recipient", actor="test",
                                       organization="org-another-center")
    for token in (make_token(app, "auditor"), other_center):
        client, csrf = _signed_in(app, token)
        r = client.post(f"/ui/requests/{request_id}/status-link", data={"csrf_token": csrf})
        assert r.status_code == 403 and b"Not allowed" in r.data
        page = client.get(f"/ui/requests/{request_id}").get_data(as_text=True)
        assert "Email a new status link" not in page
        r = app.test_client().post(f"/center/requests/{request_id}/status-link",
                                   headers=bearer(token))
        assert r.status_code == 403
    # the other center's staff see none of this center's requests either
    r = app.test_client().get(f"/center/requests/{request_id}", headers=bearer(other_center))
    assert r.status_code == 403 and form_for()["family_name"] not in r.get_data(as_text=True)
    assert len(mail.messages) == 1 and _events(app, "center.status-link.reissued") == []
    assert _status_page(app, first).status_code == 200  # the patient's link still works


def test_the_api_and_the_cli_reissue_and_a_failed_mail_leaves_no_link(mailing_app, mail, tmp_path,
                                                                      monkeypatch):
    app = mailing_app
    from gateway.cli import requests as cli_requests

    request_id = _request(app)
    first = _link(mail, 1)
    r = app.test_client().post(f"/center/requests/{request_id}/status-link",
                               headers=bearer(make_token(app, "recipient", "doctor")))
    assert r.status_code == 200 and r.get_json()["id"] == request_id
    second = _link(mail, 2)
    assert _status_page(app, first).status_code == 403
    assert _status_page(app, second).status_code == 200

    monkeypatch.setattr(cli_requests, "services", lambda: app.extensions["gateway"])
    r = CliRunner().invoke(cli_requests.requests, ["reissue-link", request_id])
    assert r.exit_code == 0 and "previous one is revoked" in r.output
    third = _link(mail, 3)
    assert _status_page(app, second).status_code == 403
    assert _status_page(app, third).status_code == 200
    assert [e.actor for e in _events(app, "center.status-link.reissued")] == ["doctor", "cli"]

    (tmp_path / "smtp-password").write_text("not-the-password\n")  # the mail server refuses us
    r = app.test_client().post(f"/center/requests/{request_id}/status-link",
                               headers=bearer(make_token(app, "operator")))
    assert r.status_code >= 500 and "could not be emailed" in r.get_data(as_text=True)
    assert len(mail.messages) == 3
    assert _status_page(app, third).status_code == 403  # revoked all the same
    with app.extensions["gateway"].db.session() as s:
        assert all(t.revoked_at is not None for t in s.scalars(
            select(CenterToken).filter_by(request_id=request_id, purpose="status")))
    [failed] = _events(app, "center.status-link.not-mailed")
    assert failed.outcome == "failure" and failed.detail["request"] == request_id
    r = CliRunner().invoke(cli_requests.requests, ["reissue-link", "no-such-request"])
    assert r.exit_code != 0
