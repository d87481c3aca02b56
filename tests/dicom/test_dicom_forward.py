"""Forwarding to the recipient's PACS (Orthanc) by C-STORE and by STOW-RS, with
per-instance results so a resumed delivery sends only what is missing."""
from __future__ import annotations

import requests

from connectors.dicom.forward import Outgoing, forward_c_store, forward_stow_rs, outgoing_from_file
from tests.dicom.dicom_studies import make_study


def recipient_has(recipient, sop: str) -> bool:
    found = requests.post(f"{recipient.url}/tools/lookup", data=sop, timeout=10).json()
    return bool(found)


def test_c_store_forward_and_resume(dicom, tmp_path):
    study = make_study(tmp_path / "fw", 20, 2, patient_id="PAT-FWD", rows=64, cols=64)
    items = [outgoing_from_file(f) for f in study.files]
    results = {}
    first_half = frozenset(i.sop_instance_uid for i in items[:10])
    # the first run delivers 10 and "crashes"; the resumed run must send only the others
    report = forward_c_store(items[:10], "127.0.0.1", dicom.recipient.dicom_port,
                             "RECIPIENT", "GATEWAY",
                             on_result=lambda sop, ok, detail: results.__setitem__(sop, ok))
    assert sorted(report.sent) == sorted(first_half) and report.complete
    report = forward_c_store(items, "127.0.0.1", dicom.recipient.dicom_port, "RECIPIENT",
                             "GATEWAY", already_sent=first_half,
                             on_result=lambda sop, ok, detail: results.__setitem__(sop, ok))
    assert report.skipped == 10 and len(report.sent) == 10 and report.complete
    assert all(results.values()) and len(results) == 20
    assert all(recipient_has(dicom.recipient, i.sop_instance_uid) for i in items)


def test_c_store_reports_each_refused_instance(dicom, tmp_path):
    study = make_study(tmp_path / "fw", 3, 1, patient_id="PAT-FWD2", rows=32, cols=32)
    items = [outgoing_from_file(f) for f in study.files]
    odd = Outgoing(items[0].sop_instance_uid, "1.2.826.0.1.3680043.9.9999.7",
                   items[0].transfer_syntax, items[0].path)  # a class Orthanc does not take
    report = forward_c_store([odd] + items[1:], "127.0.0.1", dicom.recipient.dicom_port,
                             "RECIPIENT", "GATEWAY")
    assert sorted(report.sent) == sorted(i.sop_instance_uid for i in items[1:])
    assert "does not accept SOP class" in report.failed[odd.sop_instance_uid]
    unreachable = forward_c_store(items, "127.0.0.1", 1, "NOBODY", "GATEWAY")
    assert sorted(unreachable.pending) == sorted(i.sop_instance_uid for i in items)


def test_stow_rs_forward(dicom, tmp_path):
    study = make_study(tmp_path / "stow", 12, 1, patient_id="PAT-STOW", rows=64, cols=64)
    items = [outgoing_from_file(f) for f in study.files]
    seen, answered, sending = [], [], []
    report = forward_stow_rs(items, dicom.recipient.dicomweb_url, batch_bytes=40_000,
                             already_sent=frozenset({items[0].sop_instance_uid}),
                             on_result=lambda sop, ok, detail: seen.append((sop, ok)),
                             on_answer=lambda: answered.append(len(seen)),
                             on_sending=lambda: sending.append(len(answered)))
    assert report.skipped == 1 and len(report.sent) == 11 and report.complete
    assert all(ok for _, ok in seen)
    # several requests (40 kB each at most), each request's outcomes before its on_answer
    assert len(answered) > 1 and answered == sorted(set(answered)) and answered[-1] == 11
    # the caller hears of each request's body going out (a slow recipient's request may
    # outlast a lease): during every request, before its answer
    assert sorted(set(sending)) == list(range(len(answered)))
    assert all(recipient_has(dicom.recipient, i.sop_instance_uid) for i in items[1:])
    assert not recipient_has(dicom.recipient, items[0].sop_instance_uid)
