"""Faxes through the whole gateway: the cover sheet from the API, the provider's fax in
the drop folder, ingest by the worker's beat, the pull woken, delivery without the cover
page; and the review queue for a fax that matches nothing."""
from __future__ import annotations

import base64
import io
import os

from pypdf import PdfReader, PdfWriter

from gateway.cli.demo import make_pdf
from tests.helpers import record_binaries, wait_until
from tests.test_transfer_flow import TERMINAL, Stack


def _transfer(stack, claims_for, sign) -> str:
    auth_id = stack.authorize(claims_for(), sign)
    r = stack.client.post("/transfers", json={"authorization": auth_id, "sources": ["fax"],
                                              "recipient": "center"}, headers=stack.operator)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


def _records_pdf(tmp_path, pages: int) -> PdfReader:
    writer = PdfWriter()
    for n in range(pages):
        path = tmp_path / f"page-{n}.pdf"
        make_pdf(path, f"Outside records page {n}", ["synthetic"], {
            "name": {"family": "Nobody", "given": ["No"]}, "birthDate": "1900-01-01"})
        writer.append(str(path))
    buf = io.BytesIO()
    writer.write(buf)
    return PdfReader(io.BytesIO(buf.getvalue()))


def _drop(fax_dir, name: str, *parts: PdfReader) -> None:
    writer = PdfWriter()
    for part in parts:
        writer.append(part)
    tmp = fax_dir / f".{name}.part"  # written under a hidden name, renamed when complete
    with open(tmp, "wb") as fh:
        writer.write(fh)
    os.rename(tmp, fax_dir / name)


def _delivered_pdfs(stack) -> list[PdfReader]:
    [received] = stack.inbox()
    bundle = stack.received_bundle(received["id"])
    return [PdfReader(io.BytesIO(base64.b64decode(b["data"]))) for b in record_binaries(bundle)]


def test_fax_with_cover_sheet_is_matched_and_delivered(app, client, operator, processes, sender_config,
                                                        receiver_config, tmp_path, claims_for, sign,
                                                        fax_dir):
    stack = Stack(app, client, operator, processes, sender_config, receiver_config, tmp_path)
    stack.start_receiver()
    tid = _transfer(stack, claims_for, sign)
    cover = client.get(f"/transfers/{tid}/cover-sheet", headers=operator)
    assert cover.status_code == 200 and cover.mimetype == "application/pdf"
    # the provider faxes back the cover sheet followed by two pages of records
    _drop(fax_dir, "fax-0001.pdf", PdfReader(io.BytesIO(cover.data)), _records_pdf(tmp_path, 2))
    view = stack.wait_state(tid, TERMINAL, timeout=180)
    assert view["state"] == "completed", view["reason"]
    assert [i["kind"] for i in view["itemList"]] == ["fax"]
    [pdf] = _delivered_pdfs(stack)
    assert len(pdf.pages) == 2  # the cover sheet is not delivered
    assert "Outside records page 0" in pdf.pages[0].extract_text()
    assert [e.detail["method"] for e in stack.events("fax.matched")] == ["qr"]
    assert "fax ingest watching (inotify)" in stack.worker.log_path.read_text()


def test_unmatched_fax_waits_for_review_then_goes(app, client, operator, processes, sender_config,
                                                  receiver_config, tmp_path, claims_for, sign, fax_dir):
    stack = Stack(app, client, operator, processes, sender_config, receiver_config, tmp_path)
    stack.start_receiver()
    tid = _transfer(stack, claims_for, sign)
    _drop(fax_dir, "no-cover.pdf", _records_pdf(tmp_path, 1))

    def in_review():
        body = client.get("/faxes/review", headers=operator).get_json()
        return body["review"]

    [item] = wait_until(in_review, 60, 0.3, "the fax to reach the review queue")
    assert item["pages"] == 1
    preview = client.get(f"/faxes/review/{item['fax_id']}/preview", headers=operator)
    assert preview.mimetype == "image/png" and preview.data.startswith(b"\x89PNG")
    shown = client.get(f"/faxes/review/{item['fax_id']}", headers=operator).get_json()
    assert shown["fax_id"] == item["fax_id"]
    reads = stack.events("fax.review.read")  # a fax awaiting review is patient data
    assert {e.detail["what"] for e in reads} == {"list", "item", "preview"}
    assert all(e.actor and e.role == "operator" for e in reads)
    assert {e.detail["fax_id"] for e in reads if e.detail["what"] != "list"} == {item["fax_id"]}
    assert stack.view(tid)["state"] in ("pending", "pulling")  # nothing is guessed
    bad = client.post(f"/faxes/review/{item['fax_id']}/assign", json={"transfer": "nope"}, headers=operator)
    assert bad.status_code == 404
    r = client.post(f"/faxes/review/{item['fax_id']}/assign", json={"transfer": tid}, headers=operator)
    assert r.status_code == 200
    view = stack.wait_state(tid, TERMINAL, timeout=120)
    assert view["state"] == "completed", view["reason"]
    [pdf] = _delivered_pdfs(stack)
    assert len(pdf.pages) == 1
    again = client.post(f"/faxes/review/{item['fax_id']}/reject", json={"reason": "x"}, headers=operator)
    assert again.status_code == 409  # already decided


def test_faxes_already_in_the_folder_all_go_in_one_transfer(app, client, operator, processes, sender_config,
                                                            receiver_config, tmp_path, claims_for, sign, fax_dir):
    """The first fax matched wakes the pull while the others are still being analyzed: the
    pull waits for that backlog instead of finishing with one fax and leaving the rest to
    a follow-up transfer."""
    stack = Stack(app, client, operator, processes, sender_config, receiver_config, tmp_path)
    stack.start_receiver()
    tid = _transfer(stack, claims_for, sign)
    cover = PdfReader(io.BytesIO(client.get(f"/transfers/{tid}/cover-sheet", headers=operator).data))
    for n in range(5):
        _drop(fax_dir, f"fax-{n:04d}.pdf", cover, _records_pdf(tmp_path, 1))
    view = stack.wait_state(tid, TERMINAL, timeout=240)
    assert view["state"] == "completed", view["reason"]
    assert [i["kind"] for i in view["itemList"]] == ["fax"] * 5
    matched = stack.events("fax.matched")
    assert len(matched) == len({e.detail["fax_id"] for e in matched}) == 5  # each fax taken once
    assert {e.transfer_id for e in matched} == {tid}
    assert sorted(len(pdf.pages) for pdf in _delivered_pdfs(stack)) == [1] * 5


def test_the_backlog_clearing_into_review_wakes_the_waiting_pull(
        app, client, operator, processes, sender_config, receiver_config, tmp_path, claims_for,
        sign, fax_dir):
    """A matched fax's pull waits while another received file is still being written; that
    file turns out to be no answer (it goes to review). Once nothing is left to analyze the
    pull is woken then, not at its next retry (five minutes away here)."""
    sender_config["retry"] = {"base_delay_s": 300, "max_delay_s": 300, "max_attempts": 10}
    stack = Stack(app, client, operator, processes, sender_config, receiver_config, tmp_path)
    stack.start_receiver()
    tid = _transfer(stack, claims_for, sign)
    cover = PdfReader(io.BytesIO(client.get(f"/transfers/{tid}/cover-sheet", headers=operator).data))
    stray = io.BytesIO()
    writer = PdfWriter()
    writer.append(_records_pdf(tmp_path, 1))
    writer.write(stray)
    data = stray.getvalue()
    with open(fax_dir / "still-coming.pdf", "wb") as slow:  # a fax server writing in place
        slow.write(data[:100])
        slow.flush()
        _drop(fax_dir, "answer.pdf", cover, _records_pdf(tmp_path, 1))
        # the answer is matched and pulled; the pull waits for the file still being written
        def backlogged():
            return [e for e in stack.events("transfer.pull.retry")
                    if "to be analyzed" in e.detail["error"]]

        wait_until(backlogged, 120, 0.2, "the pull to wait for the file being written")
        slow.write(data[100:])
    waited = backlogged()[-1].at
    view = stack.wait_state(tid, TERMINAL, timeout=120)
    assert view["state"] == "completed", view["reason"]
    assert [i["kind"] for i in view["itemList"]] == ["fax"]
    [review] = client.get("/faxes/review", headers=operator).get_json()["review"]
    assert review["pages"] == 1
    [finished] = [e for e in stack.events("transfer.pull.finished") if e.detail.get("source") == "fax"]
    assert (finished.at - waited).total_seconds() < 150  # woken, not retried after 300 s
