"""Fixtures for the center's requests: a center gateway in-process (its providers point
at loopback ports nothing listens on: the bad-input tests must send nothing), and a
valid form to spoil one field at a time; the real SMTP test server and a center that
mails through it."""
from __future__ import annotations

from datetime import date, timedelta

import pytest

from gateway import create_app
from gateway.storage.blobstore import new_master_key
from tests.helpers import bearer, free_port, make_token
from tests.notify_peers import MailServer


def form_for(**overrides) -> dict:
    """A complete, valid request form (synthetic patient)."""
    today = date.today()
    form = {"family_name": "Testperson", "given_name": "Avery", "birth_date": "1970-01-01",
            "identifier_system": "urn:oid:2.16.840.1.113883.19.5", "identifier_value": "MRN-000001",
            "email": "avery@patient.example", "providers": ["hospital", "office"],
            "data_classes": ["all"], "date_start": "", "date_end": "",
            "purpose": "A second opinion on my diagnosis and treatment plan",
            "expiration_date": (today + timedelta(days=60)).isoformat(),
            "ack_revoke": "on", "ack_conditioning": "on", "ack_redisclosure": "on",
            "questions": "Is the operation needed?", "signed_by": "patient",
            "signature_name": "Avery Testperson", "signature_date": today.isoformat()}
    form.update(overrides)
    return form


def center_settings(tmp_path) -> dict:
    """A center whose providers point at loopback ports nothing listens on."""
    (tmp_path / "token").write_text("not-used")
    (tmp_path / "fax-out").mkdir()
    return {"data_dir": str(tmp_path / "center"), "blob_key": new_master_key(),
            "organization": "org-center", "mode": "both", "port": free_port(),
            "center": {"name": "Test Center", "issuer": "https://center.test/intake",
                       "fax_outbox": str(tmp_path / "fax-out"), "return_fax": "+1 555 0199",
                       "providers": {
                           "hospital": {"name": "Hospital", "kind": "gateway",
                                        "organization": "org-hospital",
                                        "endpoints": [{"type": "pdf-folder", "address": "/x"}],
                                        "base_url": f"http://127.0.0.1:{free_port()}",
                                        "token_file": str(tmp_path / "token")},
                           "office": {"name": "Records Office", "kind": "fax",
                                      "organization": "org-office", "fax_number": "+1 555 0101",
                                      "endpoints": [{"type": "fax", "address": "+1 555 0101"}]}}}}


@pytest.fixture
def center_config(tmp_path) -> dict:
    return center_settings(tmp_path)


@pytest.fixture
def center_app(center_config):
    app = create_app(center_config)
    yield app
    app.extensions["gateway"].close()


@pytest.fixture
def staff(center_app) -> dict:
    return bearer(make_token(center_app, "operator"))


@pytest.fixture
def mail(tmp_path):
    folder = tmp_path / "mail"
    folder.mkdir()
    server = MailServer(folder, password="mail-password", mechanism="PLAIN")
    (tmp_path / "smtp-password").write_text("mail-password\n")
    yield server
    server.stop()


@pytest.fixture
def mailing_app(tmp_path, mail):
    config = center_settings(tmp_path)
    config["base_url"] = "https://center.example"
    config["notify"] = {"email": {
        "host": "127.0.0.1", "port": mail.port, "username": "gateway",
        "password_file": str(tmp_path / "smtp-password"), "ca_file": str(mail.ca),
        "from": "requests@center.example", "to": ["staff@center.example"], "events": []}}
    app = create_app(config)
    yield app
    app.extensions["gateway"].close()
