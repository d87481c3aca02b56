"""The PDF drop folder connector and the PDF -> DocumentReference mapping."""
import hashlib
import os
from datetime import date

import pytest

from connectors import connector_class
from connectors.base import RawRecord, RecordQuery, RejectedRecord, SourceRejected, SourceUnavailable
from gateway.cli.demo import make_pdf
from mappings import MappingContext, MappingFailed, map_record

PATIENT = {"name": {"family": "Testperson", "given": ["Avery"]}, "birthDate": "1970-01-01"}


def query(tid="t1", done=frozenset()):
    return RecordQuery(authorization_id="a", transfer_id=tid, already_fetched=done)


@pytest.fixture
def conn(tmp_path):
    root = tmp_path / "drop"
    (root / "t1").mkdir(parents=True)
    c = connector_class("pdf-folder")("fax", {"path": str(root)}, tmp_path / "work")
    c.root_dir = root / "t1"
    return c


def test_fetches_pdfs_with_hashes_and_skips_what_it_has(conn):
    make_pdf(conn.root_dir / "a.pdf", "A", ["x"], PATIENT)
    make_pdf(conn.root_dir / "b.pdf", "B", ["y"], PATIENT)
    records = list(conn.fetch(query()))
    assert [r.origin for r in records] == ["a.pdf", "b.pdf"]
    for r in records:
        data = (conn.root_dir / r.origin).read_bytes()
        assert r.sha256 == hashlib.sha256(data).hexdigest() and r.size == len(data)
        assert r.path.read_bytes() == data and r.path.parent == conn.workdir
    assert (conn.root_dir / "a.pdf").exists()  # copied, not moved
    assert [r.origin for r in conn.fetch(query(done=frozenset({"a.pdf"})))] == ["b.pdf"]


def test_hostile_entries_become_rejections(conn, tmp_path):
    d = conn.root_dir
    (d / "empty.pdf").write_bytes(b"")
    (d / "fake.pdf").write_bytes(b"MZ\x90\x00")
    (d / "x.exe").write_bytes(b"%PDF-")
    (d / "sub.pdf").mkdir()
    (d / "link.pdf").symlink_to(tmp_path)
    (d / ".hidden.pdf").write_bytes(b"%PDF-1.4")
    (d / os.fsdecode(b"bad\xffname.pdf")).write_bytes(b"%PDF-1.4")
    (d / "new\nline.pdf").write_bytes(b"%PDF-1.4")
    out = list(conn.fetch(query()))
    assert all(isinstance(r, RejectedRecord) for r in out)
    reasons = {r.origin: r.reason for r in out}
    assert reasons["empty.pdf"] == "empty file"
    assert "signature" in reasons["fake.pdf"]
    assert "not a .pdf" in reasons["x.exe"]
    assert "not a regular file" in reasons["sub.pdf"] and "not a regular file" in reasons["link.pdf"]
    assert "plain printable" in reasons[".hidden.pdf"]
    assert "plain printable" in reasons["new\\nline.pdf"]
    assert any("\\udcff" in o or "\\xff" in o for o in reasons)  # escaped, never raw bytes
    assert all(o.isprintable() for o in reasons)


def test_size_cap(conn):
    make_pdf(conn.root_dir / "big.pdf", "A", ["x"], PATIENT)
    conn.options["max_bytes"] = 100
    [r] = list(conn.fetch(query()))
    assert isinstance(r, RejectedRecord) and "limit" in r.reason


def test_missing_folder_is_retried_later_and_links_refused(conn, tmp_path):
    with pytest.raises(SourceUnavailable):
        list(conn.fetch(query("not-yet")))
    (conn.root_dir.parent / "t2").symlink_to(tmp_path)
    with pytest.raises(SourceRejected):
        list(conn.fetch(query("t2")))
    with pytest.raises(SourceRejected):
        list(conn.fetch(query("../t1")))


def _record(path, **meta):
    data = path.read_bytes()
    return RawRecord(source="fax", kind="pdf", media_type="application/pdf", path=path,
                     sha256=hashlib.sha256(data).hexdigest(), size=len(data), origin=path.name,
                     metadata=meta)


def test_pdf_maps_to_a_valid_document_reference(tmp_path):
    path = tmp_path / "note.pdf"
    make_pdf(path, "Note", ["x"], PATIENT)
    [m] = map_record(_record(path, data_class="pathology", mtime=1767225600),
                     MappingContext(patient_reference="urn:uuid:p"))
    doc = m.resource
    assert doc.__class__.__name__ == "DocumentReference" and doc.status == "current"
    assert doc.subject.reference == "urn:uuid:p"
    assert doc.type.coding[0].code == "11526-1"
    att = doc.content[0].attachment
    assert att.contentType == "application/pdf" and att.size == path.stat().st_size
    assert att.hash == hashlib.sha1(path.read_bytes()).digest()  # base64Binary, decoded by the model
    assert doc.identifier[0].value == hashlib.sha256(path.read_bytes()).hexdigest()
    assert m.data_class == "pathology" and m.carries_record_bytes
    assert isinstance(m.clinical_date, date)


@pytest.mark.parametrize("content,message", [
    (b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog", "cannot be read"),
    (b"%PDF-1.4\n%%EOF", "cannot be read"),
])
def test_broken_pdfs_fail_with_the_origin(tmp_path, content, message):
    path = tmp_path / "broken.pdf"
    path.write_bytes(content)
    with pytest.raises(MappingFailed) as err:
        map_record(_record(path), MappingContext(patient_reference="urn:uuid:p"))
    assert message in str(err.value) and err.value.origin == "broken.pdf"


def test_encrypted_pdf_is_refused(tmp_path):
    from pypdf import PdfReader, PdfWriter

    plain = tmp_path / "plain.pdf"
    make_pdf(plain, "Note", ["x"], PATIENT)
    writer = PdfWriter(clone_from=PdfReader(plain))
    writer.encrypt("secret")
    locked = tmp_path / "locked.pdf"
    with open(locked, "wb") as fh:
        writer.write(fh)
    with pytest.raises(MappingFailed, match="encrypted"):
        map_record(_record(locked), MappingContext(patient_reference="urn:uuid:p"))


def test_unknown_kind(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(b"x")
    rec = _record(path)
    rec = RawRecord(**{**rec.__dict__, "kind": "nope"})
    with pytest.raises(MappingFailed, match="no mapping"):
        map_record(rec, MappingContext(patient_reference="urn:uuid:p"))


def test_pdfs_that_cannot_be_opened_safely_are_refused_with_the_sandbox_reason(conn):
    """Folder documents go to the recipient as they are, so a bomb would be decoded by the
    recipient's viewer: the copy is inspected in the fax sandbox and refused, never yielded."""
    from tests.fax import hostile

    d = conn.root_dir
    (d / "bomb.pdf").write_bytes(hostile.image_bomb_pdf())  # 1 MB, 32768 x 32768 pixels
    (d / "loop.pdf").write_bytes(hostile.reference_loop_pdf())
    (d / "page.pdf").write_bytes(hostile.bad_page_pdf())
    (d / "stream.pdf").write_bytes(hostile.zip_bomb_pdf(inflated_mb=512))
    make_pdf(d / "good.pdf", "Good", ["x"], PATIENT)
    out = {r.origin: r for r in conn.fetch(query())}
    reasons = {o: r.reason for o, r in out.items() if isinstance(r, RejectedRecord)}
    assert reasons == {
        "bomb.pdf": "unsafe PDF (image-too-large): image object 5 is 32768 x 32768 pixels "
                    "(limit 50000000 per image)",
        "loop.pdf": "unsafe PDF (reference-loop): object 5 resolves to a loop of references",
        "page.pdf": "unsafe PDF (bad-page): page 2 does not load: Failed to load page.",
        "stream.pdf": "unsafe PDF (stream-too-large): stream object 4 inflates to over 128 MB"}
    assert isinstance(out["good.pdf"], RawRecord)
    assert sorted(p.name for p in conn.workdir.iterdir()) == [out["good.pdf"].path.name]  # no copy left


def test_unreadable_pdfs_still_reach_the_mapping_for_its_message(conn):
    """Truncated files are not unsafe, just broken: the mapping reports them as before."""
    (conn.root_dir / "truncated.pdf").write_bytes(b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog")
    [r] = list(conn.fetch(query()))
    assert isinstance(r, RawRecord)
    with pytest.raises(MappingFailed, match="cannot be read"):
        map_record(r, MappingContext(patient_reference="urn:uuid:p"))


def test_a_file_swapped_for_a_link_never_brings_in_another_file(conn, tmp_path):
    """Check-then-open let a file be swapped for a link to any readable file between the
    check and the copy. Each file is now opened once, without following links, and
    checked and read from that descriptor: however the swaps fall, no record is ever the
    linked file."""
    import shutil
    import threading
    import time

    secret, regular = tmp_path / "secret.pdf", tmp_path / "regular.pdf"
    make_pdf(secret, "Another patient's chart", ["not for this transfer"], PATIENT)
    make_pdf(regular, "The record", ["for this transfer"], PATIENT)
    secret_sha = hashlib.sha256(secret.read_bytes()).hexdigest()
    name, stop = conn.root_dir / "r.pdf", threading.Event()
    shutil.copyfile(regular, name)

    def swap():  # atomic renames in the folder: a hard link to the PDF, then a symlink
        while not stop.is_set():
            os.link(regular, conn.root_dir / ".r1")
            os.replace(conn.root_dir / ".r1", name)
            os.symlink(secret, conn.root_dir / ".r2")
            os.replace(conn.root_dir / ".r2", name)

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    taken, refused, deadline = [], 0, time.monotonic() + 8
    try:
        while time.monotonic() < deadline and len(taken) + refused < 150:
            for r in conn.fetch(query()):
                if isinstance(r, RawRecord):
                    taken.append(r.sha256)
                elif r.origin == "r.pdf":
                    refused += 1
    finally:
        stop.set()
        swapper.join(5)
    assert secret_sha not in taken
    assert taken or refused  # the file was seen, as itself or refused as a link
