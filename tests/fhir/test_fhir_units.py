"""Pieces of the FHIR connector and mapping that need no server."""
from __future__ import annotations

from datetime import date, datetime, timezone
from pathlib import Path

import orjson
import pytest
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from connectors import connector_class
from connectors.base import RawRecord, SourceRejected
from connectors.fhir.bundles import BundleFormatError, BundleReader
from connectors.fhir.connector import resource_uuid as connector_uuid
from connectors.fhir.http import retry_after_seconds, under_base
from connectors.fhir.plan import Capability, plan_streams, search_types
from connectors.fhir.smart import load_private_key, public_jwks
from mappings import DATA_CLASSES, MappingContext, MappingFailed, map_record
from mappings.fhir import jsontext
from mappings.fhir.validate import MemoValidator, model_class
from mappings.fhir_r4 import InvalidResource, ResourcesInvalid, map_fhir_json_items, resource_uuid

BASE = "https://ehr.example.org/fhir"
CTX = MappingContext("urn:uuid:7a1f5b7e-0000-4000-8000-000000000001")


def write(tmp_path: Path, doc, name="b.json", **kw) -> Path:
    p = tmp_path / name
    p.write_bytes(orjson.dumps(doc, **kw))
    return p


# -- bundle splitting -------------------------------------------------------------------
DEEP: dict = {}
for _level in range(20):  # deeper than the fast path's guess goes
    DEEP = {"x": DEEP, "s": "}"}
TRICKY = {"resourceType": "Bundle", "type": "searchset",
          "link": [{"relation": "next", "url": "https://x/fhir/O?a={b}"}],
          "entry": [{"resource": {"resourceType": "Basic", "id": "1", "text": {"div": "}{\"]["}}},
                    {"resource": {"resourceType": "Basic", "id": "2", "n": [{"a": "{{"}, {"b": "\\"}]}},
                    {"resource": {"resourceType": "Basic", "id": "3", "deep": DEEP}}],
          "total": 3}


@pytest.mark.parametrize("block", [1, 2, 7, 64, 1 << 20])
@pytest.mark.parametrize("indent", [False, True])
def test_bundle_reader_matches_a_full_parse(tmp_path, block, indent):
    path = write(tmp_path, TRICKY, option=orjson.OPT_INDENT_2 if indent else None)
    reader = BundleReader(path, block=block)
    got = [obj for raw, obj in reader.entries()]
    assert got == TRICKY["entry"]
    assert reader.skeleton == {**TRICKY, "entry": []}


@pytest.mark.parametrize("cut", [1, 10, 100, -1])
def test_bundle_reader_refuses_a_truncated_page(tmp_path, cut):
    raw = orjson.dumps(TRICKY)
    (tmp_path / "t.json").write_bytes(raw[:cut] if cut > 0 else raw[:-1])
    with pytest.raises(BundleFormatError):
        list(BundleReader(tmp_path / "t.json", block=16).entries())


def test_bundle_reader_is_not_misled_by_entries_that_look_like_the_next(tmp_path):
    """Where the next entry seems to begin (`,{"fullUrl":`) may be inside this one: a
    nested bundle's entries, or a string; only the entry's real end is taken."""
    inner = {"resourceType": "Bundle", "type": "collection",
             "entry": [{"fullUrl": "urn:uuid:1", "resource": {"resourceType": "Basic", "id": "a"}},
                       {"fullUrl": "urn:uuid:2", "resource": {"resourceType": "Basic", "id": "b"}}]}
    entries = [{"fullUrl": f"{BASE}/Bundle/n", "resource": {**inner, "id": "n"}},
               {"fullUrl": f"{BASE}/Basic/s", "resource": {"resourceType": "Basic", "id": "s",
                                                           "text": {"div": '},{"fullUrl":"x"}'}}},
               {"fullUrl": f"{BASE}/Basic/t", "resource": {"resourceType": "Basic", "id": "t"}}]
    doc = {"resourceType": "Bundle", "type": "searchset", "entry": entries}
    for block in (5, 64, 1 << 20):
        reader = BundleReader(write(tmp_path, doc), block=block)
        got = list(reader.entries())
        assert [obj for _, obj in got] == entries
        assert [orjson.loads(raw) for raw, _ in got] == entries


# -- URLs and retries ----------------------------------------------------------------------
@pytest.mark.parametrize("url,ok", [
    (f"{BASE}/Observation?_offset=10", True),
    (f"{BASE}", True),
    ("https://ehr.example.org:443/fhir/Binary/1", True),
    ("https://EHR.example.org/fhir/Binary/1", True),
    ("http://ehr.example.org/fhir/Binary/1", False),  # scheme
    ("https://ehr.example.org:8443/fhir/Binary/1", False),  # port
    ("https://evil.example.org/fhir/Binary/1", False),  # host
    ("https://ehr.example.org.evil.example/fhir/x", False),
    ("https://user@ehr.example.org/fhir/Binary/1", False),  # userinfo
    ("https://ehr.example.org/fhir-admin/x", False),  # prefix trick
    ("https://ehr.example.org/fhir/../admin", False),
    ("https://ehr.example.org/fhir/%2e%2e/admin", False),
    ("https://169.254.169.254/latest/meta-data", False),
])
def test_under_base(url, ok):
    assert under_base(url, BASE) is ok


def test_retry_after_forms():
    assert retry_after_seconds("7") == 7
    assert retry_after_seconds(None) is None
    assert retry_after_seconds("soon") is None
    assert 99 <= retry_after_seconds("Wed, 21 Oct 2015 07:28:00 GMT",
                                      now=datetime(2015, 10, 21, 7, 26, 20, tzinfo=timezone.utc).timestamp()) <= 101


def test_connector_is_registered_and_refuses_plain_http_elsewhere(tmp_path):
    cls = connector_class("fhir-rest")
    with pytest.raises(SourceRejected, match="plain http"):
        cls("s", {"base_url": "http://ehr.example.org/fhir"}, tmp_path)
    with pytest.raises(SourceRejected, match="unknown auth"):
        cls("s", {"base_url": BASE, "auth": {"type": "basic"}}, tmp_path)


# -- SMART keys ------------------------------------------------------------------------------
@pytest.mark.parametrize("make,alg", [(lambda: RSAKey.generate_key(2048), "RS384"),
                                      (lambda: ECKey.generate_key("P-384"), "ES384")])
def test_public_jwks_has_no_private_members(make, alg):
    key = make()
    jwks = public_jwks(key.as_pem(private=True).decode(), kid="k1")
    (jwk,) = jwks["keys"]
    assert jwk["kid"] == "k1" and jwk["alg"] == alg and jwk["use"] == "sig"
    assert not {"d", "p", "q", "dp", "dq", "qi"} & set(jwk)
    assert public_jwks(key)["keys"][0]["kid"] == key.thumbprint()
    # a token signed with the private key verifies with the published JWKS
    from joserfc.jwk import KeySet
    token = jwt.encode({"alg": alg, "kid": "k1"}, {"iss": "x"}, key, algorithms=[alg])
    assert jwt.decode(token, KeySet.import_key_set(jwks), algorithms=[alg]).claims["iss"] == "x"


def test_wrong_keys_are_refused():
    with pytest.raises(SourceRejected, match="P-384"):
        load_private_key(ECKey.generate_key("P-256"))
    with pytest.raises(SourceRejected):
        load_private_key(RSAKey.generate_key(2048).as_pem(private=False))
    with pytest.raises(SourceRejected):
        public_jwks(RSAKey.generate_key(2048), alg="ES384")


# -- plan ----------------------------------------------------------------------------------
def test_search_types_follow_data_classes():
    types, cats = search_types(frozenset({"labs"}))
    assert types == ["DiagnosticReport", "MolecularSequence", "Observation", "Specimen"]  # the one table
    assert cats == {"Observation": ("laboratory",)}
    types, cats = search_types(frozenset({"labs", "conditions"}))
    assert "Condition" in types and "Observation" not in cats  # conditions want every category
    assert "AllergyIntolerance" in search_types(frozenset({"all"}))[0]
    with pytest.raises(SourceRejected):
        search_types(frozenset({"horoscopes"}))


@pytest.mark.parametrize("version,name", [("3.0.2", "STU3"), ("5.0.0", "R5"), ("", "no fhirVersion")])
def test_other_fhir_versions_stop(version, name):
    cap = Capability.from_statement({"resourceType": "CapabilityStatement", "fhirVersion": version})
    with pytest.raises(SourceRejected, match=name):
        cap.check_version()


def test_plan_uses_everything_only_when_offered():
    doc = {"resourceType": "CapabilityStatement", "fhirVersion": "4.0.1", "rest": [{"mode": "server", "resource": [
        {"type": "Patient", "operation": [{"name": "everything"}]},
        {"type": "Observation", "searchParam": [{"name": "patient"}, {"name": "date"}]},
        {"type": "Condition", "searchParam": [{"name": "patient"}]}]}]}
    cap = Capability.from_statement(doc)
    (s,) = plan_streams(cap, "p1", data_classes=frozenset({"all"}), date_from=None, date_to=None,
                        since="2026-01-01T00:00:00Z", page_size=50)
    assert s.path == "Patient/p1/$everything" and ("_since", "2026-01-01T00:00:00Z") in s.params
    streams = plan_streams(cap, "p1", data_classes=frozenset({"labs", "conditions"}),
                           date_from=date(2020, 1, 1), date_to=None, since=None, page_size=50, mode="search")
    by = {s.key: dict(s.params) for s in streams}
    assert set(by) == {"Condition", "Observation"}  # DiagnosticReport: not on this server
    assert by["Observation"]["date"] == "ge2020-01-01"
    assert "onset-date" not in by["Condition"]  # not declared by the server


# -- validation memo -------------------------------------------------------------------------
def test_memo_validation_builds_the_same_models_as_plain_validation(synthea_files):
    doc = orjson.loads(synthea_files[0].read_bytes())
    resources = [e["resource"] for e in doc["entry"]]
    plain = [model_class(r["resourceType"]).model_validate(r) for r in orjson.loads(orjson.dumps(resources))]
    expected = [m.model_dump_json() for m in plain]
    for size in (4096, 16):  # a roomy memo, and one that evicts all the time
        memo = MemoValidator(max_entries=size)
        fast = [memo.validate(r) for r in orjson.loads(orjson.dumps(resources))]
        assert memo.hits > 0 and len(memo.memo) <= size
        assert [m.model_dump_json() for m in fast] == expected


def test_memo_validation_still_rejects_what_plain_validation_rejects():
    memo = MemoValidator()
    good = {"resourceType": "Observation", "id": "1", "status": "final",
            "code": {"coding": [{"system": "http://loinc.org", "code": "1"}]}}
    memo.validate(orjson.loads(orjson.dumps(good)))  # validate() works on (and changes) its input
    from pydantic import ValidationError
    for bad in ({**good, "status": 7}, {**good, "code": {"coding": [{"system": 5}]}},
                {**good, "code": {"coding": [None]}}, {**good, "valueQuantity": {"value": "x"}},
                {**good, "effectiveDateTime": "2020-13-45"}):
        with pytest.raises(ValidationError):
            memo.validate(orjson.loads(orjson.dumps(bad)))


# -- mapping -----------------------------------------------------------------------------------
def record(tmp_path: Path, entries: list[dict], **meta) -> RawRecord:
    path = tmp_path / "r.ndjson"
    path.write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in entries))
    metadata = {"base_url": BASE, "fhir_version": "4.0.1", "patient_id": "p1", "stream": "x", "page": 0,
                "chunk": 0, "attachments": {}, **meta}
    return RawRecord(source="ehr", kind="fhir-json", media_type="application/fhir+ndjson", path=path,
                     sha256="0" * 64, size=path.stat().st_size, origin=f"{BASE}/x#page=0&chunk=0",
                     metadata=metadata)


def entry(res: dict, full: str | None = None) -> dict:
    return {"fullUrl": full or f"{BASE}/{res['resourceType']}/{res['id']}", "resource": res}


def test_mapping_normalizes_references_ids_and_classes(tmp_path):
    enc = {"resourceType": "Encounter", "id": "e1", "status": "finished",
           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
           "subject": {"reference": f"{BASE}/Patient/p1"}, "period": {"start": "2021-05-06T07:00:00Z"}}
    obs = {"resourceType": "Observation", "id": "o1", "status": "final", "meta": {"versionId": "3"},
           "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                     "code": "vital-signs"}]}],
           "code": {"text": "pulse"}, "subject": {"reference": "Patient/p1"},
           "encounter": {"reference": "Encounter/e1/_history/2"}, "effectiveDateTime": "2021-05-06",
           "performer": [{"reference": "urn:uuid:abc"}, {"reference": "https://other.example/fhir/Practitioner/9"}]}
    prac = {"resourceType": "Practitioner", "id": "dr1"}
    rec = record(tmp_path, [entry(enc), entry(obs), entry(prac, "urn:uuid:abc")])
    items = map_record(rec, CTX)
    assert all(not isinstance(i, InvalidResource) for i in items)
    by_type = {i.resource.get_resource_type(): i for i in items}
    o = by_type["Observation"]
    assert o.data_class == "vitals" and o.clinical_date == date(2021, 5, 6)
    assert o.resource.id == resource_uuid(BASE, "Observation", "o1") == connector_uuid(BASE, "Observation", "o1")
    from gateway.engine.follow_ups import source_url

    fresh = map_record(rec, CTX)
    assert [source_url(i) for i in fresh] == [f"{BASE}/Encounter/e1", f"{BASE}/Observation/o1",
                                              f"{BASE}/Practitioner/dr1", None]
    assert [i.resource._model for i in fresh] == [None] * 4  # read without building the models
    assert o.resource.meta.source == f"{BASE}/Observation/o1" and o.resource.meta.versionId == "3"
    assert o.resource.subject.reference == CTX.patient_reference
    assert o.resource.encounter.reference == f"urn:uuid:{resource_uuid(BASE, 'Encounter', 'e1')}"
    assert o.resource.performer[0].reference == f"urn:uuid:{resource_uuid(BASE, 'Practitioner', 'dr1')}"
    assert o.resource.performer[1].reference == "https://other.example/fhir/Practitioner/9"  # external: kept
    assert by_type["Encounter"].data_class == "encounters"
    assert by_type["Encounter"].resource.subject.reference == CTX.patient_reference
    prov = by_type["Provenance"].resource
    assert {t.reference for t in prov.target} == {f"urn:uuid:{i.resource.id}" for i in items
                                                  if i.resource.get_resource_type() != "Provenance"}
    assert prov.entity[0].what.identifier.value == rec.origin
    assert all(i.data_class in DATA_CLASSES | {"billing", "supporting"} for i in items)
    assert by_type["Practitioner"].data_class == by_type["Provenance"].data_class == "supporting"


@pytest.mark.parametrize("stream", ["x", "Éloi"])  # the schema check's, then the model's
def test_a_records_provenance_travels_as_the_model_writes_the_whole_of_it(tmp_path, stream):
    """The Provenance is checked by the schema check (or, for what it leaves to them, by
    the model with its first target and the others written as that one): the JSON that
    travels is byte for byte the model's own of the whole."""
    from mappings.fhir.schema_check import schema_check
    from mappings.fhir.validate import model_class

    rec = record(tmp_path, [entry({"resourceType": "Observation", "id": f"o{n}", "status": "final",
                                   "code": {"text": "pulse"}, "subject": {"reference": "Patient/p1"}})
                            for n in range(40)], stream=stream)
    items = map_record(rec, CTX)
    prov = next(i for i in items if i.resource.get_resource_type() == "Provenance")
    whole = model_class("Provenance").model_validate(orjson.loads(prov.json))
    assert prov.json == whole.model_dump_json().encode()
    assert [t.reference for t in whole.target] == [f"urn:uuid:{resource_uuid(BASE, 'Observation', f'o{n}')}"
                                                   for n in range(40)]
    assert prov.resource.id == whole.id and prov.resource.target == whole.target
    assert schema_check().accepts(prov.json) is stream.isascii()


@pytest.mark.parametrize("value", ["73.2", "0.5", "1e-7", "100", "1.00", "1.5e3", "-0", "1E-7",
                                   "18446744073709551616.0", "12345678901234567890123"])
def test_decimals_keep_their_text_whichever_parser_reads_them(tmp_path, value):
    """A compact entry whose numbers orjson writes back as served is read by orjson, any
    other by jsontext: either way the JSON that travels has the number's text as served,
    and the model (built on first use) has it too."""
    from mappings.fhir.schema_check import Parsed, pulled
    from mappings.fhir_r4 import _resource

    obs = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
           "subject": {"reference": "Patient/p1"}, "valueQuantity": {"value": 0, "unit": "u"}}
    line = orjson.dumps(entry(obs)).replace(b'"value":0', b'"value":' + value.encode())
    path = tmp_path / "r.ndjson"
    path.write_bytes(line + b"\n")
    rec = RawRecord(source="ehr", kind="fhir-json", media_type="application/fhir+ndjson", path=path,
                    sha256="0" * 64, size=len(line) + 1, origin=f"{BASE}/x#page=0&chunk=0",
                    metadata={"base_url": BASE, "fhir_version": "4.0.1", "patient_id": "p1",
                              "attachments": {}})
    assert _resource(line)[1] is (value in ("73.2", "0.5", "1e-7", "100"))
    item = next(i for i in map_record(rec, CTX) if i.data_class != "supporting")
    assert b'"value":' + value.encode() + b',"unit"' in item.json
    assert type(item.resource).__name__ == "PulledResource"  # the schema check accepted it
    expected = model_class("Observation").model_validate(jsontext.loads(item.json))
    assert item.resource.valueQuantity.value == expected.valueQuantity.value
    assert str(item.resource.valueQuantity.value) == str(expected.valueQuantity.value)
    assert item.resource.model_dump_json() == expected.model_dump_json()
    assert item.resource.meta.source == f"{BASE}/Observation/o1"
    bad = item.json.replace(b'"status":"final"', b'"status":7')  # a Parsed is checked as it is
    assert pulled(Parsed(orjson.loads(item.json)), item.json) is not None
    assert pulled(Parsed(orjson.loads(bad)), bad) is None and pulled(jsontext.loads(bad), bad) is None


def test_records_of_one_pull_share_rewrites_but_not_their_fullurls(tmp_path):
    """Rewritten references are memoized for a pull's records; a `urn:` one resolves
    through its own record's fullUrls only, whatever another record of the pull held."""
    prac = {"resourceType": "Practitioner", "id": "dr1"}
    obs = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
           "subject": {"reference": "Patient/p1"}, "performer": [{"reference": "urn:uuid:abc"},
                                                                 {"reference": "Practitioner/dr1"}]}
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    first = record(first_dir, [entry(prac, "urn:uuid:abc"), entry(obs)], pull_started="2026-01-01T00:00:00Z")
    second = record(second_dir, [entry({**obs, "id": "o2"})], pull_started="2026-01-01T00:00:00Z")
    by_id = {i.resource.meta.source.rpartition("/")[2]: i.resource for r in (first, second)
             for i in map_record(r, CTX) if i.data_class != "supporting"}
    dr1 = f"urn:uuid:{resource_uuid(BASE, 'Practitioner', 'dr1')}"
    assert [p.reference for p in by_id["o1"].performer] == [dr1, dr1]
    assert [p.reference for p in by_id["o2"].performer] == ["urn:uuid:abc", dr1]  # not in its record
    assert by_id["o1"].subject.reference == by_id["o2"].subject.reference == CTX.patient_reference


def test_references_are_rewritten_in_any_spacing_and_escaping_and_never_across_lines(tmp_path):
    """The record is rewritten at once: a reference written with spaces around its colon
    or with escapes is rewritten as a compact one is, and a broken line (a reference whose
    string never ends) is reported with its line number while the next line's references
    are rewritten as usual."""
    obs = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
           "subject": {"reference": "Patient/p1"}, "encounter": {"reference": "Encounter/e1"}}
    spaced = orjson.dumps(entry(obs)).replace(b'"reference":"Patient/p1"', b'"reference" :\t"Patient\\/p1"')
    spaced = spaced.replace(b'"reference":"Encounter/e1"', b'"reference": "Encounter/e1"')
    broken = b'{"fullUrl":"' + BASE.encode() + b'/Observation/o2","resource":{"resourceType":"Observation",' \
             b'"id":"o2","subject":{"reference":"Patient/p1}}'
    after = orjson.dumps(entry({**obs, "id": "o3"}))
    path = tmp_path / "r.ndjson"
    path.write_bytes(spaced + b"\n" + broken + b"\n" + after + b"\n")
    rec = RawRecord(source="ehr", kind="fhir-json", media_type="application/fhir+ndjson", path=path,
                    sha256="0" * 64, size=path.stat().st_size, origin=f"{BASE}/x#page=0&chunk=0",
                    metadata={"base_url": BASE, "fhir_version": "4.0.1", "patient_id": "p1", "attachments": {}})
    with pytest.raises(ResourcesInvalid) as err:
        map_record(rec, CTX)
    [invalid] = err.value.invalid
    assert invalid.origin == f"{rec.origin}#line=2" and invalid.raw == broken
    encounter = f"urn:uuid:{resource_uuid(BASE, 'Encounter', 'e1')}"
    observations = [i for i in err.value.valid if i.data_class != "supporting"]
    assert [i.resource.meta.source for i in observations] == [f"{BASE}/Observation/o1", f"{BASE}/Observation/o3"]
    for item in observations:
        assert item.resource.subject.reference == CTX.patient_reference
        assert item.resource.encounter.reference == encounter
        assert b"Patient/p1" not in item.json and b"Encounter/e1" not in item.json


def test_invalid_resources_are_kept_with_their_errors(tmp_path):
    secret = "Jane-Secret-Value"
    bad = {"resourceType": "Observation", "id": "bad", "status": {"nested": secret}, "code": {"text": "x"}}
    good = {"resourceType": "Condition", "id": "c1", "subject": {"reference": "Patient/p1"},
            "onsetDateTime": "2019-02-03"}
    unknown = {"resourceType": "Spaceship", "id": "s1"}
    rec = record(tmp_path, [entry(bad), entry(good), entry(unknown)])
    with pytest.raises(ResourcesInvalid) as err:
        map_record(rec, CTX)  # the record fails as one item, naming what is wrong
    assert "2 of 4 resources fail" in str(err.value) and "Observation/bad: status" in str(err.value)
    assert secret not in str(err.value) and err.value.origin == rec.origin
    items = err.value.valid + err.value.invalid
    assert [i.resource.get_resource_type() for i in err.value.valid] == ["Condition", "Provenance"]
    invalid = [i for i in items if isinstance(i, InvalidResource)]
    assert {i.source_id for i in invalid} == {"bad", "s1"}
    bad_item = next(i for i in invalid if i.source_id == "bad")
    assert "status" in bad_item.error and secret not in bad_item.error  # no values in errors
    assert orjson.loads(bad_item.raw)["status"] == {"nested": secret}  # but kept whole
    assert bad_item.data_class == "conditions"
    cond = next(i for i in items if not isinstance(i, InvalidResource) and i.data_class == "conditions")
    assert cond.clinical_date == date(2019, 2, 3)


def test_other_fhir_versions_are_not_mapped(tmp_path):
    rec = record(tmp_path, [entry({"resourceType": "Basic", "id": "1"})], fhir_version="3.0.2")
    with pytest.raises(MappingFailed, match="3.0.2"):
        map_record(rec, CTX)


def test_attachment_becomes_a_binary_streamed_from_the_record(tmp_path):
    path = tmp_path / "a.bin"
    path.write_bytes(b"%PDF-1.4 ...")
    owner = {"resourceType": "DocumentReference", "id": "d1", "type": {"coding": [{"code": "18748-4"}]},
             "date": "2022-03-04T00:00:00Z"}
    rec = RawRecord(source="ehr", kind="fhir-attachment", media_type="application/pdf", path=path,
                    sha256="0" * 64, size=12, origin=f"{BASE}/Binary/b1",
                    metadata={"base_url": BASE, "url": "Binary/b1", "absolute_url": f"{BASE}/Binary/b1",
                              "binary_id": resource_uuid(BASE, "Binary", "b1"), "owner": owner,
                              "content_type": "application/pdf"})
    (item,) = map_record(rec, CTX)
    assert item.carries_record_bytes and item.resource.contentType == "application/pdf"
    assert item.resource.id == resource_uuid(BASE, "Binary", "b1")
    assert item.data_class == "radiology" and item.clinical_date == date(2022, 3, 4)


# -- golden file ---------------------------------------------------------------------------
GOLDEN = Path(__file__).parent / "golden"


def _golden_view(items) -> list[dict]:
    out = []
    for item in items:
        if isinstance(item, InvalidResource):
            out.append({"invalid": f"{item.resource_type}/{item.source_id}", "error": item.error,
                        "data_class": item.data_class})
        else:
            out.append({"data_class": item.data_class,
                        "clinical_date": item.clinical_date.isoformat() if item.clinical_date else None,
                        "resource": jsontext.loads(item.json or item.resource.model_dump_json())})
    return out


def test_golden_record(tmp_path):
    """tests/fhir/golden/record.ndjson (a page chunk as the connector writes it) maps to
    expected.json. Regenerate with GOLDEN_UPDATE=1 after a deliberate change and review it."""
    import os
    import shutil
    src = tmp_path / "record.ndjson"
    shutil.copy(GOLDEN / "record.ndjson", src)
    rec = RawRecord(source="ehr", kind="fhir-json", media_type="application/fhir+ndjson", path=src,
                    sha256="0" * 64, size=src.stat().st_size, origin=f"{BASE}/Patient/$everything#page=0&chunk=0",
                    fetched_at=datetime(2025, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
                    metadata={"base_url": BASE, "fhir_version": "4.0.1", "patient_id": "p1",
                              "stream": "Patient/$everything", "page": 0, "chunk": 0,
                              "attachments": {"Binary/b1": resource_uuid(BASE, "Binary", "b1")}})
    got = _golden_view(map_fhir_json_items(rec, CTX))
    expected_path = GOLDEN / "expected.json"
    if os.environ.get("GOLDEN_UPDATE"):  # what travels, every value's text as it is
        expected_path.write_bytes(orjson.dumps(got, option=orjson.OPT_INDENT_2,
                                               default=lambda n: orjson.Fragment(n.text)) + b"\n")
    expected = jsontext.loads(expected_path.read_bytes())
    assert jsontext.dumps(got, sort_keys=True) == jsontext.dumps(expected, sort_keys=True)


def test_patient_search_values_are_escaped():
    from connectors.fhir.patients import _escape
    assert _escape("urn:oid:1.2|3,4$5\\6") == "urn:oid:1.2\\|3\\,4\\$5\\\\6"
