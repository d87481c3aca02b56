"""Fidelity of documents: what the receiving gateway holds is what the source held.

One transfer from two sources through a sending gateway (worker process) to a receiving
gateway (receive mode), both real:
- `pdf-folder`: a text PDF, an image-only scan, a multi-page letter and a 2 MB scan that
  goes before its bundle as `PUT Binary/{id}`; each delivered document (inline Binary of
  the stored bundle, or the uploaded Binary) has the sha256 of the file in the folder.
  The folder source takes PDFs only (TIFFs are the fax drop folder's).
- `fax-drop`: a G4 TIFF fax becomes a PDF whose page images are the TIFF's compressed
  strips byte for byte (img2pdf embeds CCITT data as is); a PDF fax without a cover page
  is delivered with the dropped file's sha256.
A difference fails naming the document.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import uuid
from pathlib import Path

import pikepdf
import pytest
import requests
from PIL import Image

from gateway.cli.demo import make_pdf
from gateway.trust.authorizations import example_claims
from tests.delivery.delivery_fixtures import _stack_class
from tests.delivery.delivery_support import (ISSUER, SENDER_ORG, TERMINAL, start_from_sources,
                                             write_large_pdf)
from tests.fax import faxgen

INLINE_MAX = 512 * 1024  # the 2 MB scan goes by upload, the others inline
PATIENT = {"name": {"family": "Testperson", "given": ["Avery"]}, "birthDate": "1970-01-01"}


@pytest.fixture
def small_inline(sender_config):
    sender_config["attachment_inline_max_bytes"] = INLINE_MAX


@pytest.fixture
def fstack(small_inline, app, client, operator, processes, sender_config, receiver_config, tmp_path):
    return _stack_class()(app, client, operator, processes, sender_config, receiver_config, tmp_path)


def folder_documents(staging: Path) -> dict[str, str]:
    """The records office's PDFs: name -> sha256 of the file."""
    staging.mkdir()
    make_pdf(staging / "text.pdf", "Synthetic discharge note", ["synthetic"], PATIENT)
    person = faxgen.people(1, seed=21)[0]
    scans = [faxgen.faxify(p, fine=True, noise=0.002, seed=5).convert("L")
             for p in faxgen.render(faxgen.records_pdf(person, 1, seed=8), 150)]
    faxgen.scanned_pdf(scans, staging / "scanned.pdf", dpi=150)
    (staging / "multi-page.pdf").write_bytes(faxgen.records_pdf(person, 4, seed=9))
    write_large_pdf(staging / "large-scan.pdf", 2)
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in staging.iterdir()}


def single_strip_g4_tiff(path: Path, seed: int) -> list[bytes]:
    """A two-page fine-resolution G4 fax, one strip per page (as fax servers write them);
    returns each page's compressed strip."""
    pages = faxgen.render(faxgen.records_pdf(faxgen.people(1, seed=seed)[0], 2, seed=seed), 204)
    frames = [faxgen.faxify(p, fine=True, seed=seed + i) for i, p in enumerate(pages)]
    frames[0].save(path, format="TIFF", compression="group4", save_all=True, append_images=frames[1:],
                   dpi=(204, 196), strip_size=1 << 30)
    strips = []
    with Image.open(path) as img, open(path, "rb") as fh:
        for index in range(img.n_frames):
            img.seek(index)
            [offset], [count] = img.tag_v2[273], img.tag_v2[279]
            assert img.tag_v2[259] == 4, "not CCITT G4"
            fh.seek(offset)
            strips.append(fh.read(count))
    return strips


def drop_fax(fax_dir: Path, name: str, data: bytes, transfer_id: str) -> None:
    """A fax with a sidecar naming its transfer (no cover page), each renamed into place."""
    for final, content in ((f"{name}.json", json.dumps({"transfer_id": transfer_id}).encode()), (name, data)):
        part = fax_dir / f".{final}.part"
        part.write_bytes(content)
        os.rename(part, fax_dir / final)


def delivered(stack) -> dict[str, bytes]:
    """sha256 (as the DocumentReference states it) -> bytes the receiver serves, per document."""
    base, headers = stack.receiver_config["base_url"], stack.inbox_headers
    out = {}
    for item in stack.inbox():
        docs = requests.get(f"{base}/inbox/{item['id']}/documents", headers=headers, timeout=10).json()
        for doc in docs["documents"]:
            if doc["sha256"]:
                out[doc["sha256"]] = requests.get(base + doc["content"], headers=headers, timeout=30).content
    return out


def another_transfer(stack, sign, receiver_url, sources: dict[str, dict]) -> str:
    """As start_from_sources, with the receiver already running."""
    claims = example_claims(
        ISSUER, f"auth-{uuid.uuid4().hex[:12]}",
        disclosers=[{"id": SENDER_ORG, "name": "Test Hospital", "endpoints": list(sources.values())}],
        recipient={"id": "org-test-center", "name": "Test Center",
                   "endpoint": {"type": "gateway", "address": receiver_url}})
    r = stack.client.post("/transfers", json={"authorization": stack.authorize(claims, sign),
                                              "sources": list(sources), "recipient": "center"},
                          headers=stack.operator)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["id"]


def fax_results(store: Path) -> dict[str, dict]:
    """Dropped file name -> the fax store's result for it (matched/ or done/)."""
    out = {}
    for state in ("matched", "done"):
        for folder in (store / state).iterdir():
            meta = json.loads((folder / "meta.json").read_text())
            out[meta["source_name"]] = json.loads((folder / "result.json").read_text())
    return out


def test_documents_arrive_as_the_sources_hold_them(fstack, sign, receiver_url, drop_dir, fax_dir, tmp_path):
    # two transfers, one fax each: a fax source ends with the faxes matched when it pulls
    tid = start_from_sources(fstack, sign, receiver_url, {
        "records": {"type": "pdf-folder", "address": str(drop_dir)},
        "fax": {"type": "fax", "address": str(fax_dir)}})
    tid2 = another_transfer(fstack, sign, receiver_url, {"fax": {"type": "fax", "address": str(fax_dir)}})
    expected = folder_documents(tmp_path / "staging")
    os.rename(tmp_path / "staging", drop_dir / tid)
    tiff = tmp_path / "fax-g4.tif"
    strips = single_strip_g4_tiff(tiff, seed=31)
    plain_pdf = faxgen.tiff_to_pdf(faxgen.save_tiff(
        [faxgen.faxify(p, seed=41) for p in faxgen.render(faxgen.records_pdf(None, 1, seed=41), 204)],
        tmp_path / "plain.tif"), tmp_path / "plain.pdf").read_bytes()
    drop_fax(fax_dir, "fax-g4.tif", tiff.read_bytes(), tid)
    drop_fax(fax_dir, "fax-plain.pdf", plain_pdf, tid2)

    view = fstack.wait_state(tid, TERMINAL, 180)
    assert view["state"] == "completed", view["reason"]
    assert view["uploads"] == {"uploaded": 1}  # the large scan went as Binary/{id}
    view = fstack.wait_state(tid2, TERMINAL, 180)
    assert view["state"] == "completed", view["reason"]
    got = delivered(fstack)

    for name, sha in sorted(expected.items()):
        assert sha in got, f"{name}: not delivered (or delivered as other bytes)"
        assert hashlib.sha256(got[sha]).hexdigest() == sha, f"{name}: delivered bytes differ from the folder's"

    faxes = fax_results(tmp_path / "fax-store")
    assert {n: r["match"] for n, r in faxes.items()} == {"fax-g4.tif": "sidecar", "fax-plain.pdf": "sidecar"}
    plain = got.get(faxes["fax-plain.pdf"]["sha256"])
    assert plain is not None, "fax-plain.pdf: not delivered"
    assert hashlib.sha256(plain).hexdigest() == hashlib.sha256(plain_pdf).hexdigest(), \
        "fax-plain.pdf: delivered bytes differ from the dropped file's"

    from_tiff = got.get(faxes["fax-g4.tif"]["sha256"])
    assert from_tiff is not None, "fax-g4.tif: not delivered"
    pdf = pikepdf.open(io.BytesIO(from_tiff))
    assert len(pdf.pages) == len(strips), "fax-g4.tif: page count differs"
    for number, (page, strip) in enumerate(zip(pdf.pages, strips), start=1):
        [image] = list(page.obj.Resources.XObject.values())
        assert image.stream_dict.Filter in ("/CCITTFaxDecode", pikepdf.Array([pikepdf.Name.CCITTFaxDecode])), \
            f"fax-g4.tif page {number}: re-encoded, not embedded"
        assert image.read_raw_bytes() == strip, f"fax-g4.tif page {number}: image data differs from the TIFF strip"
