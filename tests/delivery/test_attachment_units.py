"""Which attachments point at an upload, in process: a FHIR source's Binary over the
inline limit is replaced by an upload wherever an attachment references it, and goes
inline after all when nothing does."""
from __future__ import annotations

from gateway.exchange.attachments import SHA256_EXT, declared_sha256, referenced
from gateway.outbound.attachments import Upload
from gateway.exchange.ids import binary_id
from gateway.outbound.uploads import point_units_at_uploads
from gateway.outbound.units import StreamedBinary, Unit


def test_fhir_binaries_over_the_limit_become_uploads_only_where_referenced():
    doc_url, used, unused = "urn:uuid:doc", "urn:uuid:bin-1", "urn:uuid:bin-2"
    up1 = Upload(binary_id("t-1", "a" * 64), "k1", "application/pdf", "a" * 64, 9_000_000)
    up2 = Upload(binary_id("t-1", "b" * 64), "k2", "image/tiff", "b" * 64, 8_000_000)
    report = {"resourceType": "DiagnosticReport",
              "presentedForm": [{"contentType": "application/pdf", "url": used, "size": 1}]}
    units = {doc_url: Unit("2026-01-01", doc_url, [{"fullUrl": doc_url, "resource": report}]),
             used: Unit("", used, inline=StreamedBinary(used, "k1", "application/pdf", up1.size)),
             unused: Unit("", unused, inline=StreamedBinary(unused, "k2", "image/tiff", up2.size))}
    uploads = {up1.ref: up1, up2.ref: up2}
    point_units_at_uploads(units, {used: up1, unused: up2}, uploads)
    [att] = list(referenced(report))
    assert att["url"] == f"Binary/{up1.binary_id}" and att["size"] == up1.size
    assert declared_sha256(att) == "a" * 64 and att["extension"][0]["url"] == SHA256_EXT
    assert units[used].entries == []  # its bytes go before the bundle
    assert units[unused].entries == [units[unused].inline]  # nothing names an upload: inline
    assert set(uploads) == {up1.ref}
    assert binary_id("t-1", "a" * 64) == up1.binary_id != binary_id("t-2", "a" * 64)  # stable, per transfer
