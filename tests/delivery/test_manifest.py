"""The completeness manifest: per source, counts and sha256 of every item delivered (in
the bundle, or beside it for DICOM instances); items not delivered are counted, not named."""
from __future__ import annotations

import hashlib
from types import SimpleNamespace as NS

from gateway.exchange.manifest import dicom_counts
from gateway.outbound.manifest import manifest_document


def item(source, origin, kind, state, sha, study=None):
    return NS(source=source, origin=origin, kind=kind, state=state, sha256=sha, size=10,
              media_type="application/dicom" if kind == "dicom" else "application/pdf",
              record_meta={"study_uid": study} if study else {}, error=None)


def test_manifest_counts_hashes_and_dicom_beside_the_bundle():
    t = NS(id="t-1", sources=[NS(name="pacs", state="done"), NS(name="records", state="done")])
    items = [item("pacs", f"1.2.3.{n}", "dicom", "mapped", f"{n:064x}", study="1.2.3") for n in range(3)]
    items += [item("pacs", "1.2.9.1", "dicom", "mapped", "f" * 64, study="1.2.9"),
              item("records", "a.pdf", "pdf", "mapped", "a" * 64),
              item("records", "secret-name.pdf", "pdf", "excluded", "b" * 64)]
    places = {"urn:uuid:doc-a": [("records", "a.pdf")]}
    doc = manifest_document(t, items, places, {"urn:uuid:doc-a": 1}, "urn:uuid:group")
    pacs, records = doc["sources"]["pacs"], doc["sources"]["records"]
    assert pacs["items"] == 4 and len(pacs["delivered"]) == 4
    assert all(d["sentBeside"] and d["entry"] is None for d in pacs["delivered"])
    assert records["items"] == 2 and records["byState"] == {"mapped": 1, "excluded": 1}
    assert [d["origin"] for d in records["delivered"]] == ["a.pdf"]  # excluded: counted only
    assert "secret-name.pdf" not in str(doc)
    assert records["delivered"][0]["entry"] == "urn:uuid:doc-a"
    assert records["sha256"] == hashlib.sha256(("a" * 64).encode()).hexdigest()
    assert dicom_counts(doc) == {"1.2.3": 3, "1.2.9": 1}


def test_completeness_says_what_was_found_delivered_refused_and_not_asked_for():
    """Per source: found, delivered, refused counted by reason (never named), invalid
    resources of a record, and the gaps (types not searchable, unresolved references)."""
    from gateway.outbound.completeness import report

    t = NS(id="t-2", sources=[NS(name="ehr", state="done"), NS(name="pacs", state="done")])

    def row(source, origin, kind, state, error=None, meta=None):
        return NS(source=source, origin=origin, kind=kind, state=state, sha256="c" * 64, size=1,
                  media_type="application/fhir+json", record_meta=meta or {}, error=error)

    items = [row("ehr", "page-1", "fhir-json", "mapped",
                 meta={"invalid": [{"origin": "page-1#Observation/o9", "reason": "value: bad"}]}),
             row("ehr", "page-2", "fhir-json", "mapped"),
             row("ehr", "not-searchable:Claim", "gap", "not-searchable", "no patient search"),
             row("ehr", "unresolved:Device/d1", "gap", "unresolved", "read answered 404"),
             row("pacs", "study/1.2.3", "skipped", "excluded", "birth date differs"),
             row("pacs", "study/1.2.4", "skipped", "excluded", "birth date differs"),
             row("pacs", "1.2.5/1", "dicom", "pulled")]
    got = report(t.sources, items)
    assert got["ehr"] == {
        "state": "done", "found": 2, "delivered": 2, "pending": 0, "invalidResources": 1,
        "refused": [{"reason": "invalid resource: value: bad", "count": 1}],
        "notSearchable": [{"what": "Claim", "reason": "no patient search"}],
        "unresolved": [{"what": "Device/d1", "reason": "read answered 404"}], "complete": False,
        "invalid": [{"what": "Observation/o9", "reason": "value: bad"}]}  # named: meant to go
    assert got["pacs"]["found"] == 3 and got["pacs"]["delivered"] == 0
    assert got["pacs"]["pending"] == 1 and got["pacs"]["complete"] is False
    assert got["pacs"]["refused"] == [{"reason": "birth date differs", "count": 2}]
    doc = manifest_document(t, items, {}, {}, "urn:uuid:group")
    assert doc["sources"]["pacs"]["completeness"]["refused"] == got["pacs"]["refused"]
    assert "1.2.3" not in str(doc["sources"]["pacs"]["completeness"])  # counted, not named
    clean = report([NS(name="ehr", state="done")], [row("ehr", "page-1", "fhir-json", "mapped")])
    assert clean["ehr"]["complete"] is True
