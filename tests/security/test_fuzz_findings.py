"""What the fuzz harnesses found, each fed through its normal entry point: the clean
refusal the gateway now answers with (before the fixes each escaped as another error:
a 500, a traceback, a sandbox child that died)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from connectors.fax.sandbox import FileRejected, inspect
from gateway.audit import checkpoints as cpmod
from gateway.audit.verify import verify_files_report
from gateway.trust.keys import SigningKeys

from tests.test_receive import bundle, peer, post, receiver, sender_keys  # noqa: F401


# --- bundles (POST /fhir) ---------------------------------------------------------

def _refused(response, status: int, text: str) -> None:
    assert response.status_code == status, response.get_json()
    assert text in response.get_json()["issue"][0]["diagnostics"]


def test_bundle_nested_beyond_the_parser_is_refused(receiver, peer, sender_keys):  # noqa: F811
    body = b'{"resourceType":"Bundle","type":"transaction","entry":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    _refused(post(receiver.test_client(), peer, body, sender_keys), 400, "nested too deeply")


@pytest.mark.parametrize("levels", [150, 400])
def test_bundle_nested_beyond_the_validators_is_refused(receiver, peer, sender_keys, levels):  # noqa: F811
    """Valid FHIR, extensions in extensions: 150 levels (300 of JSON) broke the entry hash
    (orjson writes 255), 400 the validators (RecursionError): both were a 500."""
    data = json.loads(bundle(1))
    extension = {"url": "http://example.org/synthetic", "valueString": "leaf"}
    for _ in range(levels):
        extension = {"url": "http://example.org/synthetic", "extension": [extension]}
    data["entry"][0]["resource"]["extension"] = [extension]
    response = post(receiver.test_client(), peer, json.dumps(data).encode(), sender_keys)
    _refused(response, 422, f"nested {2 * levels + 3} levels deep")


def test_bundle_nested_within_the_bound_is_accepted(receiver, peer, sender_keys):  # noqa: F811
    data = json.loads(bundle(1))
    extension = {"url": "http://example.org/synthetic", "valueString": "leaf"}
    for _ in range(60):
        extension = {"url": "http://example.org/synthetic", "extension": [extension]}
    data["entry"][0]["resource"]["extension"] = [extension]
    assert post(receiver.test_client(), peer, json.dumps(data).encode(), sender_keys).status_code == 200


# --- audit checkpoints (records-gateway audit verify) -------------------------------

@pytest.fixture
def log_keys(tmp_path):
    keys = SigningKeys(tmp_path / "keys")
    keys.ensure()
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(keys.jwks()))
    return keys, path


@pytest.mark.parametrize("document", [
    {"checkpoints": [], "consistency_proofs": [{"second": 2}]},
    {"checkpoints": [], "consistency_proofs": ["not a proof"]},
    {"checkpoints": ["not a checkpoint", 7, None]},
    {"checkpoints": [{"origin": "x", "tree_size": "5", "root_hash": "00", "timestamp_ms": 1,
                      "signature": ""}]},
])
def test_malformed_checkpoint_files_are_reported(log_keys, tmp_path, document):
    _, jwks = log_keys
    path = tmp_path / "checkpoints.json"
    path.write_text(json.dumps(document))
    report = verify_files_report(None, [path], jwks)
    assert report.problems and all("malformed" in p for p in report.problems), report.problems
    assert report.checkpoints == 0


@pytest.mark.parametrize("text", [
    '{"checkpoints": [], "consistency_proofs": 1}', '{"checkpoints": 5}', "7", '"text"',
    "not json at all", "\udcff"])
def test_files_that_are_no_checkpoint_document_are_refused(log_keys, tmp_path, text):
    from gateway.errors import InvalidInput

    _, jwks = log_keys
    path = tmp_path / "checkpoints.json"
    path.write_text(text, errors="surrogateescape")
    with pytest.raises(InvalidInput) as caught:
        verify_files_report(None, [path], jwks)
    assert "checkpoints.json" in str(caught.value)


def test_signed_checkpoints_without_their_readable_time_verify(log_keys, tmp_path):
    keys, jwks = log_keys
    key = keys.current("checkpoint")
    cps = [cpmod.sign(key.private_key, origin="https://gateway.test.invalid", tree_size=size,
                      root_hash=bytes([size]) * 32, timestamp_ms=1_770_000_000_000 - size,
                      key_id=key.kid) for size in (2, 1)]
    for cp in cps:
        del cp["timestamp"]  # not signed: the verifier reads the signed milliseconds
    path = tmp_path / "checkpoints.json"
    path.write_text(json.dumps(cps))
    report = verify_files_report(None, [path], jwks)
    assert report.checkpoints == 2
    assert any(p.startswith("rollback") for p in report.problems), report.problems


def test_audit_verify_command_reports_a_malformed_proof_in_one_line(log_keys, tmp_path):
    _, jwks = log_keys
    path = tmp_path / "checkpoints.json"
    path.write_text(json.dumps({"checkpoints": [], "consistency_proofs": [{"first": "x"}]}))
    done = subprocess.run([sys.executable, "-m", "gateway", "audit", "verify", "--checkpoints",
                           str(path), "--public-key", str(jwks)], capture_output=True, text=True,
                          timeout=120)
    assert "Traceback" not in done.stderr and done.returncode != 0, done.stderr
    assert "malformed" in done.stdout + done.stderr


# --- DICOM (STOW-RS) ------------------------------------------------------------------

def _instance_with_charset(raw_charset: bytes) -> bytes:
    import io

    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName = "SYN-0001", "Synthetic^Charset"
    out = io.BytesIO()
    ds.save_as(out, enforce_file_format=True)
    assert len(raw_charset) == len(b"ISO_IR 100")
    return out.getvalue().replace(b"ISO_IR 100", raw_charset)


def test_stow_instance_with_a_nul_in_its_character_set_is_refused(receiver, peer):  # noqa: F811
    """Neither the fast header walk nor pydicom, its fallback, can look the character set
    up: the instance is refused as not understood (0xC000), not answered with a 500."""
    instance = _instance_with_charset(b"ISO_IR\x00100")
    body = (b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n" + instance
            + b"\r\n--b0undary--\r\n")
    r = receiver.test_client().post("/dicomweb/studies", data=body, headers={
        **peer, "Content-Type": 'multipart/related; type="application/dicom"; boundary=b0undary'})
    assert r.status_code == 409, r.get_data()[:500]  # its one instance failed: nothing stored
    failed = r.get_json()["00081198"]["Value"]
    assert [f["00081197"]["Value"] for f in failed] == [[0xC000]]  # cannot understand


# --- PDF (the fax and PDF folder sandbox) -----------------------------------------

def _pages_tree_without_count() -> bytes:
    """A PDF with no xref (qpdf rebuilds it) whose page tree has a bare `R` among its
    kids: qpdf raises QpdfRuntimeError, not PdfError, while flattening it."""
    return (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
            b"2 0 obj\n<< /Type /Pages /Kids [3 0 R R] >>\nendobj\n"
            b"3 0 obj\n<< /Type /Page /MediaBox [0 0 612 792] >>\nendobj\n%%EOF\n")


def _filter_name_not_utf8() -> bytes:
    """A one-page PDF whose content stream's /Filter name holds the byte 0xBC."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Count 1 /Kids [3 0 R] >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>",
               b"<< /Length 3 /Filter /Fl#bcate >>\nstream\nq Q\nendstream"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 5\n0000000000 65535 f \n" + b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size 5 /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def _startxref_past_64_bits() -> bytes:
    """A one-page PDF whose `startxref` is a 93-digit number: pikepdf raised ValueError
    (found by tests/security/fuzz/pdf_tiff.py)."""
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Count 1 /Kids [3 0 R] >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] >>"]
    out = bytearray(b"%PDF-1.4\n")
    for n, body in enumerate(objects, 1):
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    out += b"trailer\n<< /Size 4 /Root 1 0 R >>\nstartxref\n1" + b"5" * 90 + b"83\n%%EOF\n"
    return bytes(out)


@pytest.mark.parametrize("make", [_pages_tree_without_count, _filter_name_not_utf8,
                                  _startxref_past_64_bits])
def test_broken_pdf_structures_are_refused_as_unreadable(tmp_path, make):
    path = tmp_path / "incoming.pdf"
    path.write_bytes(make())
    (tmp_path / "work").mkdir()
    with pytest.raises(FileRejected) as caught:
        inspect(path, tmp_path / "work")
    assert caught.value.reason == "unreadable", (caught.value.reason, caught.value.detail)
    assert str(tmp_path) not in caught.value.detail
