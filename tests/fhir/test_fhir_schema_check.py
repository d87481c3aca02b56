"""The schema check of pulled resources (mappings/fhir/schema_check.py) accepts nothing the
R4B models refuse, so the mapping's verdicts and errors stay the models' own."""
from __future__ import annotations

import copy
import gzip
import hashlib
import json
import random

import orjson
import pytest

from mappings import map_record
from mappings.fhir import jsontext
from mappings.fhir import schema_check as sc
from mappings.fhir.validate import ResourceInvalid, check
from mappings.fhir_r4 import InvalidResource, map_fhir_json_items
from tests.fhir.test_fhir_units import BASE, CTX, entry, record

OBS = {"resourceType": "Observation", "id": "o1", "status": "final",
       "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                 "code": "vital-signs"}]}],
       "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
       "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2024-03-01T10:00:00+01:00",
       "issued": "2024-03-01T10:00:00.123Z", "valueQuantity": {"value": 1.50, "unit": "/min"},
       "component": [{"code": {"text": "x"}, "valueInteger": 3}]}
# what the R4B models refuse: each kind of rule the schema had to be made to follow
INVALID = {
    "wrong type (string for CodeableConcept)": {**OBS, "code": "8867-4"},
    "wrong type (number for string)": {**OBS, "valueQuantity": {"value": 1, "unit": 5}},
    "wrong type (object for code)": {**OBS, "status": {"x": 1}},
    "unknown element": {**OBS, "colour": "red"},
    "unknown element in a data type": {**OBS, "code": {"text": "x", "colour": "red"}},
    "impossible date": {**OBS, "effectiveDateTime": "2023-02-29"},
    "month 13": {**OBS, "effectiveDateTime": "2024-13-45"},
    "date-time without zone": {**OBS, "effectiveDateTime": "2024-03-01T10:00:00"},
    "hour 24": {**OBS, "issued": "2024-03-01T24:00:00Z"},
    "instant without time": {**OBS, "issued": "2024-03-01"},
    "missing required complex element": {k: v for k, v in OBS.items() if k != "code"},
    "missing required primitive": {k: v for k, v in OBS.items() if k != "status"},
    "required primitive: empty extension": {**{k: v for k, v in OBS.items() if k != "status"},
                                             "_status": {"extension": []}},
    "primitive extension with nothing in it": {**OBS, "_status": {}},
    "two choices of value[x]": {**OBS, "valueString": "x"},
    "required choice missing": {"resourceType": "MedicationRequest", "id": "m1", "status": "active",
                                "intent": "order", "subject": {"reference": "Patient/p1"}},
    "null in a list of elements": {**OBS, "category": [None]},
    "integer with a fraction": {**OBS, "component": [{"code": {"text": "x"}, "valueInteger": 3.5}]},
    "integer beyond 32 bits": {**OBS, "component": [{"code": {"text": "x"}, "valueInteger": 1 << 31}]},
    "positiveInt zero": {"resourceType": "Immunization", "id": "i1", "status": "completed",
                         "vaccineCode": {"text": "x"}, "patient": {"reference": "Patient/p1"},
                         "occurrenceDateTime": "2024", "protocolApplied": [{"doseNumberPositiveInt": 0}]},
    "unsignedInt below zero": {"resourceType": "ImagingStudy", "id": "i1", "status": "available",
                               "subject": {"reference": "Patient/p1"}, "numberOfSeries": -1},
    "empty string": {**OBS, "code": {"text": ""}},
    "code with two spaces": {**OBS, "status": "fi  nal"},
    "id with a space": {**OBS, "subject": {"reference": "Patient/p1", "id": "a"}, "meta": {"versionId": "a b"}},
    "bad base64": {"resourceType": "DocumentReference", "id": "d1", "status": "current",
                   "content": [{"attachment": {"contentType": "text/plain", "data": "abc"}}]},
    "boolean as a word": {"resourceType": "Patient", "id": "p1", "active": "maybe"},
}


def _models_accept(resource: dict) -> bool:
    try:
        check(jsontext.loads(orjson.dumps(resource)))
    except (ResourceInvalid, KeyError):
        return False
    return True


def test_the_example_is_accepted_by_both():
    assert _models_accept(OBS)
    assert sc.schema_check().accepts(orjson.dumps(OBS))


@pytest.mark.parametrize("case", sorted(INVALID))
def test_what_the_models_refuse_the_schema_check_does_not_accept(case):
    bad = INVALID[case]
    assert not _models_accept(bad), case
    assert not sc.schema_check().accepts(orjson.dumps(bad)), case


def test_bad_required_binding_codes_go_to_the_models():
    """R4's schema lists the codes of required bindings; the R4B models do not check them,
    so such a resource goes to the models, whose verdict stands (accepted)."""
    odd = {**OBS, "status": "finished"}
    assert not sc.schema_check().accepts(orjson.dumps(odd))
    assert _models_accept(odd)


def test_invalid_resources_get_the_same_errors_as_before(tmp_path, monkeypatch):
    """Through the mapping: each invalid resource is reported with the models' error
    (type, id and element path), exactly as without the schema check."""
    entries = [entry({**res, "id": f"bad{i}"}) for i, res in enumerate(INVALID.values())]
    entries.append(entry(OBS))
    rec = record(tmp_path, entries)
    fast = map_fhir_json_items(rec, CTX)
    monkeypatch.setattr("mappings.fhir_r4.pulled", lambda res, text: None)
    plain = map_fhir_json_items(rec, CTX)
    view = [(i.origin, i.error) if isinstance(i, InvalidResource) else i.json for i in fast]
    assert view == [(i.origin, i.error) if isinstance(i, InvalidResource) else i.json for i in plain]
    invalid = [i for i in fast if isinstance(i, InvalidResource)]
    assert len(invalid) == len(INVALID)
    date = next(i for i in invalid if i.source_id == f"bad{list(INVALID).index('impossible date')}")
    assert date.resource_type == "Observation" and "effectiveDateTime" in date.error
    assert "2023-02-29" not in date.error  # paths and messages, never values


def test_accepted_resources_read_like_their_models(tmp_path):
    rec = record(tmp_path, [entry(OBS)])
    obs, _prov = map_record(rec, CTX)
    assert isinstance(obs.resource, sc.PulledResource)
    assert obs.resource.meta.source == f"{BASE}/Observation/o1"
    assert obs.resource.get_resource_type() == "Observation"
    assert obs.resource.subject.reference == CTX.patient_reference
    model = obs.resource.model()
    assert orjson.loads(model.model_dump_json())["valueQuantity"]["value"] == 1.5
    assert orjson.loads(obs.json)["valueQuantity"]["value"] == 1.5
    assert copy.deepcopy(obs.resource).subject.reference == CTX.patient_reference


VALUES = [None, "", " x", "a  b", 0, -1, 1.5, 1 << 31, True, "true", {}, [], [{}], [None], {"x": 1},
          "2019-02-29", "2019-13-01", "2020-01-01T10:00:00", "2016-12-31T23:59:60Z",
          "2020-01-01T10:00:00.1234567Z", "24:00:00", "x" * 70, "a\nb", "AAA", "urn:uuid:1", "-0"]


def _paths(value, path=()):
    yield path
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, path + (i,))


def _at(value, path):
    for key in path:
        value = value[key]
    return value


def _mutations(resource: dict, rng: random.Random):
    paths = list(_paths(resource))[1:]
    for path in rng.sample(paths, min(len(paths), 12)):
        parent, key = _at(resource, path[:-1]), path[-1]
        for value in rng.sample(VALUES, 5):
            m = copy.deepcopy(resource)
            _at(m, path[:-1])[key] = copy.deepcopy(value)
            yield m
        m = copy.deepcopy(resource)
        del _at(m, path[:-1])[key]
        yield m
        if isinstance(parent, dict):
            for extra in (("colour", 1), (f"_{key}", {}), (f"_{key}", {"extension": []}), ("valueString", "x")):
                m = copy.deepcopy(resource)
                _at(m, path[:-1])[extra[0]] = extra[1]
                yield m


def test_mutated_synthea_resources_never_pass_what_the_models_refuse(synthea_files):
    """Thousands of mutations of real (synthetic) resources: wrong types, nulls, unknown
    elements, impossible dates, deleted required elements, extra choices. Whatever the
    schema check accepts, the models accept."""
    rng = random.Random(7)
    doc = orjson.loads(synthea_files[0].read_bytes())
    by_type: dict[str, list] = {}
    for e in doc["entry"]:
        by_type.setdefault(e["resource"]["resourceType"], []).append(e["resource"])
    check_ = sc.schema_check()
    accepted = refused_by_models = unsafe = 0
    for resources in by_type.values():
        for res in resources[:3]:
            for m in _mutations(res, rng):
                fast = check_.accepts(orjson.dumps(m))
                models = _models_accept(m)
                accepted += fast
                refused_by_models += not models
                unsafe += fast and not models
    assert refused_by_models > 1000 and accepted > 1000  # the corpus has both kinds
    assert unsafe == 0


def test_most_synthea_resources_are_accepted(synthea_files):
    doc = orjson.loads(synthea_files[0].read_bytes())
    resources = [e["resource"] for e in doc["entry"]]
    accepted = [r for r in resources if sc.schema_check().accepts(orjson.dumps(r))]
    assert len(accepted) > 0.95 * len(resources)
    assert all(_models_accept(r) for r in accepted[::10])


def test_the_vendored_schema_is_the_official_one_without_descriptions(tmp_path):
    """The file is the official 4.0.1 schema less its descriptions: written again the same
    from a file of that shape, and its content has the digest recorded when it was made."""
    schema = sc._load()
    assert schema["id"] == "http://hl7.org/fhir/json-schema/4.0"
    assert "Observation" in schema["definitions"] and "MedicinalProduct" in schema["definitions"]
    assert "description" in schema["definitions"]["Goal"]["properties"]  # an element, kept
    assert not any(isinstance(d.get("description"), str) for d in schema["definitions"].values())
    text = gzip.decompress(sc.SCHEMA_FILE.read_bytes())
    assert hashlib.sha256(text).hexdigest() == VENDORED_SHA256
    with_descriptions = dict(schema, description="see http://hl7.org/fhir/json.html#schema")
    (tmp_path / "fhir.schema.json").write_text(json.dumps(with_descriptions, indent=1))
    target = tmp_path / "out.json.gz"
    sc._write(tmp_path / "fhir.schema.json", target)
    assert gzip.decompress(target.read_bytes()) == text


VENDORED_SHA256 = "43d47875e5032bb84766730ff7b117f33826e907ab3a3c7ddc350e26f12af283"


def test_patching_every_definition_at_once_equals_patching_what_each_type_uses():
    """SchemaCheck patches all definitions once and compiles each type from what it
    reaches; per type (the slower way) the patched definitions come out the same."""
    from gateway.runtime.warmup import resource_types

    defs = sc._load()["definitions"]
    everything = sc._patched(json.loads(json.dumps(defs)))
    types = [t for t in resource_types() if t in defs]
    assert len(types) >= 40
    for rtype in types:
        alone = sc._patched(sc._reachable(defs, rtype))
        assert {n: alone[n] for n in alone} == {n: everything[n] for n in alone}, rtype
        assert sc._reachable(everything, rtype).keys() >= {rtype, "Element"}
