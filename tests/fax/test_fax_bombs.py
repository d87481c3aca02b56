"""Image bombs, reference loops and broken pages in PDFs: refused in the sandbox before
PDFium decodes them, with a reason; quarantined by the ingestor, so they never reach the
review queue (where an operator's assign would deliver them) nor a transfer's fetch.
Every parse stays under the sandbox's memory cap (`Limits.memory_mb`), measured."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from connectors.base import RecordQuery, SourceUnavailable
from connectors.fax.connector import FaxDropConnector, FaxIngestor
from connectors.fax.review import ReviewError, ReviewQueue
from connectors.fax.sandbox import FileRejected, Limits, analyze, build, inspect, read_text, render_previews
from connectors.fax.store import FaxStore

from . import faxgen, hostile
from .faxgen import KEY

CAP_MB = Limits().memory_mb

BOMBS = {  # file name -> (maker, the reason it must be refused with)
    "image-1gib.pdf": (hostile.image_bomb_pdf, "image-too-large"),  # 32768 x 32768, 1 MB on disk
    "images-per-page.pdf": (hostile.many_images_pdf, "image-too-large"),  # 3 x 36 Mpx on one page
    "images-inherited.pdf": (hostile.many_images_inherited_pdf, "image-too-large"),  # resources from /Pages
    "lying-jpeg.pdf": (hostile.lying_jpeg_pdf, "image-too-large"),  # dictionary 64 x 64, JPEG 40000 x 40000
    "inline-image.pdf": (hostile.inline_image_bomb_pdf, "image-too-large"),  # BI /W 40000 /H 40000
    "reference-loop.pdf": (hostile.reference_loop_pdf, "reference-loop"),  # MediaBox, Resources, Length
    "compressed-loop.pdf": (hostile.compressed_reference_loop_pdf, "reference-loop"),  # in an object stream
    "form-loop.pdf": (hostile.form_loop_pdf, "reference-loop"),  # a form that draws itself
    "bad-page.pdf": (hostile.bad_page_pdf, "bad-page"),  # PDFium: "Failed to load page"
    "zip-stream.pdf": (lambda: hostile.zip_bomb_pdf(inflated_mb=1024), "stream-too-large"),
}


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("bombs")
    out = {}
    for name, (make, _) in BOMBS.items():
        (base / name).write_bytes(make())
        out[name] = base / name
    return out


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_bomb_is_refused_with_its_reason_under_the_memory_cap(name, bombs, tmp_path):
    for step in (lambda p: analyze(p, tmp_path), lambda p: inspect(p, tmp_path),
                 lambda p: read_text(p, tmp_path), lambda p: build(p, tmp_path, []),
                 lambda p: render_previews(p, tmp_path)):
        with pytest.raises(FileRejected) as info:
            step(bombs[name])
        assert info.value.reason == BOMBS[name][1], (name, info.value)
        assert 0 < info.value.peak_rss_mb < CAP_MB, (name, info.value.peak_rss_mb)


def test_ordinary_faxes_and_a_large_scan_pass_well_under_the_cap(samples, tmp_path):
    """The limits refuse bombs, not real documents: a G4 TIFF, a text PDF, a scan read by
    OCR, and a 600 dpi letter-size gray scan (33.7 Mpx) that PDFium really draws."""
    scan = tmp_path / "scan-600dpi.pdf"
    Image.effect_noise((5100, 6600), 60).save(scan, "PDF", resolution=600)
    peaks = {}
    for name, path in [("qr_fine_g4", samples["qr_fine_g4"].path), ("text_layer", samples["text_layer"].path),
                       ("ocr", samples["ocr"].path), ("scan-600dpi", scan)]:
        out = tmp_path / name
        out.mkdir()
        found = analyze(path, out)
        peaks[name] = found.peak_rss_mb
        assert 0 < found.peak_rss_mb < CAP_MB / 2, (name, found.peak_rss_mb)
        assert inspect(path, out).pages == found.pages
        render_previews(path, out)  # the thumbnails a review shows: the scan's is checked below
    with Image.open(tmp_path / "scan-600dpi" / "preview-1.png") as preview:
        low, high = preview.getextrema()
    assert high - low > 50, "the scan's image was not drawn"  # noise, not a blank page
    assert peaks["ocr"] > 0 and peaks["text_layer"] > 0


def test_dropped_bombs_are_quarantined_and_never_reviewed_or_delivered(bombs, people, descriptors, tmp_path):
    drop, store = tmp_path / "drop", FaxStore(tmp_path / "store")
    drop.mkdir()
    for name in ("image-1gib.pdf", "reference-loop.pdf", "bad-page.pdf"):
        (drop / name).write_bytes(bombs[name].read_bytes())
    (drop / "unmatched.pdf").write_bytes(faxgen.records_pdf(None, 1, seed=11))  # goes to review
    ingestor = FaxIngestor(drop, store, KEY, lambda: descriptors, settle_seconds=0, empty_settle_seconds=0)
    outcomes = ingestor.scan_once() + ingestor.scan_once()  # the first pass only notes sizes
    assert sorted((o.state, o.reason) for o in outcomes) == [
        ("quarantine", "bad-page"), ("quarantine", "image-too-large"), ("quarantine", "reference-loop"),
        ("review", None)]
    queue = ReviewQueue(store)
    quarantined = {q.source_name: q.reason for q in queue.quarantined()}
    assert quarantined == {"image-1gib.pdf": "image-too-large", "reference-loop.pdf": "reference-loop",
                           "bad-page.pdf": "bad-page"}
    [reviewed] = queue.list()
    bomb_ids = [q.fax_id for q in queue.quarantined()]
    assert reviewed.fax_id not in bomb_ids
    target = people[0].transfer_id
    for fax_id in bomb_ids:  # an operator cannot assign what is not awaiting review
        with pytest.raises(ReviewError, match="it is quarantine"):
            queue.assign(fax_id, target, by="operator")
        assert (store.path("quarantine", fax_id) / "reason.txt").exists()
        assert not (store.path("quarantine", fax_id) / "document.pdf").exists()
    queue.assign(reviewed.fax_id, target, by="operator")
    conn = FaxDropConnector("fax", {"drop": str(drop), "store": str(store.root), "settle_seconds": 0},
                            tmp_path / "work")
    fetched = list(conn.fetch(RecordQuery(authorization_id="a", transfer_id=target)))
    assert [r.origin for r in fetched] == [f"fax:{reviewed.fax_id}"]


def test_operator_cannot_assign_a_bomb_through_the_api(app, client, operator, sender_config, claims_for, sign,
                                                       bombs, tmp_path):
    """The issue's path: the bomb sat in the review queue and an operator's assign delivered
    it. Now it is in quarantine with its reason, and assigning it is refused."""
    auth = client.post("/authorizations", json={"jws": sign(claims_for())}, headers=operator)
    assert auth.status_code == 201, auth.get_json()
    r = client.post("/transfers", json={"authorization": auth.get_json()["id"], "sources": ["fax"],
                                        "recipient": "center"}, headers=operator)
    assert r.status_code == 202, r.get_json()
    tid = r.get_json()["id"]
    options = sender_config["sources"]["fax"]["options"]
    drop, store = Path(options["drop"]), FaxStore(Path(options["store"]))
    (drop / "bomb.pdf").write_bytes(bombs["image-1gib.pdf"].read_bytes())
    ingestor = FaxIngestor(drop, store, KEY, lambda: [], settle_seconds=0, empty_settle_seconds=0)
    ingestor.scan_once()
    [outcome] = ingestor.scan_once()
    assert (outcome.state, outcome.reason) == ("quarantine", "image-too-large")
    listed = client.get("/faxes/review", headers=operator).get_json()
    assert listed["review"] == []
    assert [(q["fax_id"], q["reason"]) for q in listed["quarantine"]] == [(outcome.fax_id, "image-too-large")]
    r = client.post(f"/faxes/review/{outcome.fax_id}/assign", json={"transfer": tid}, headers=operator)
    assert r.status_code == 409 and "quarantine" in r.get_data(as_text=True)
    conn = FaxDropConnector("fax", {**options, "settle_seconds": 0}, tmp_path / "work")
    with pytest.raises(SourceUnavailable, match="no fax has arrived"):  # nothing to deliver
        list(conn.fetch(RecordQuery(authorization_id="a", transfer_id=tid)))
