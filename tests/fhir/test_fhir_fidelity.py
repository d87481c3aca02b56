"""Fidelity of FHIR records (issue 12, items 1-3 and 8): what the gateway delivers is the
source's own JSON, every value with the text the source served, changed only by the
documented normalizations (ids, meta.source, references, attachment urls).

The helpers here (`tagged`, `differences`) read JSON without any of the gateway's code:
numbers are kept as ("#", text) by the json module's hooks, so a comparison sees every
number's text. tests/fhir/test_fhir_fidelity_e2e.py uses them on whole deliveries.
"""
from __future__ import annotations

import hashlib
import importlib
import inspect
import json
import re
import typing
import uuid
from pathlib import Path

import pytest

from connectors.base import RawRecord
from connectors.fhir.pages import split_page
from gateway.exchange import jsontext
from gateway.exchange.ids import entry_hash
from mappings import MappingContext, map_record
from mappings.fhir.validate import R4_CHECK, R4_DEFINED, R4B_CHECK, check, model_class
from mappings.fhir_r4 import CHECKED_EXT, InvalidResource, map_fhir_json_items, resource_uuid

BASE = "https://ehr.example.org/fhir"
CTX = MappingContext("urn:uuid:7a1f5b7e-0000-4000-8000-000000000001")
# every form a FHIR decimal takes; each must arrive as written
DECIMALS = ["1.00", "0.001530", "1000.00", "1.5e3", "-0", "100", "-0.0", "1E-7", "2.50E+2",
            "12345678901234567890.50", "-12345678901234567890"]
# every form a date, dateTime or instant takes
DATE_TIMES = ["2024-01-02T03:04:05.715Z", "2024-01-02T03:04:05.715+00:00", "2024-01-02T03:04:05-05:00",
              "2024-01-02T03:04:05Z", "2024-01-02T03:04:05.1234567+14:00", "2024-01-02", "2024-01", "2024"]


# -- reading JSON with every number's text, independently of the gateway -------------------
def _number(text: str) -> tuple:
    return ("#", text)


def tagged(text: bytes | str):
    """JSON with each number as ("#", its text as written)."""
    return json.loads(text, parse_float=_number, parse_int=_number)


def show(value) -> str:
    if isinstance(value, tuple):
        return value[1]
    return json.dumps(value)[:80]


_REF = re.compile(r"^(?:(?P<base>.*)/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})"
                  r"(?:/_history/[A-Za-z0-9\-.]+)?$")


class Normalized:
    """What the documented normalizations make of a source's values: the resource's
    id (a uuid5 of its URL; gone from POST entries, whose fullUrl carries it), meta.source,
    and references (to the patient: `patient`; to another resource of the source: its
    urn:uuid; local `#id` and external ones: unchanged)."""

    def __init__(self, base: str, patient_id: str, patient: str):
        self.base, self.patient_id, self.patient = base.rstrip("/"), patient_id, patient

    def reference(self, ref: str) -> str:
        m = _REF.match(ref)
        if ref.startswith("#") or not m or (m.group("base") not in (None, self.base)):
            return ref
        if m.group("type") == "Patient" and m.group("id") == self.patient_id:
            return self.patient
        return f"urn:uuid:{resource_uuid(self.base, m.group('type'), m.group('id'))}"

    def allowed(self, path: str, source, delivered, top: dict) -> bool:
        """Whether a difference at `path` (source value -> delivered value) is a normalization."""
        url = f"{self.base}/{top['resourceType']}/{top['id']}"
        if path == "id":
            return delivered in (None, resource_uuid(self.base, *url[len(self.base) + 1:].split("/")))
        if path == "meta.source":  # the gateway's note of where the resource came from
            return delivered == url
        if path == "meta":
            return source is None and delivered == {"source": url}
        if path == "reference" or path.endswith(".reference"):
            return isinstance(source, str) and delivered == self.reference(source)
        return False


def differences(source, delivered, norm: Normalized, path: str = "", top: dict | None = None) -> list[str]:
    """Every path where the delivered JSON differs from the source's, other than by a
    documented normalization: `path: source X, delivered Y`."""
    top = source if top is None else top
    if isinstance(source, dict) and isinstance(delivered, dict):
        out = []
        for key in list(source) + [k for k in delivered if k not in source]:
            here = f"{path}.{key}" if path else key
            s, d = source.get(key), delivered.get(key)
            if key not in delivered or key not in source:
                if not norm.allowed(here, s, d, top):
                    out.append(f"{here}: source {show(s) if key in source else '(absent)'}, "
                               f"delivered {show(d) if key in delivered else '(absent)'}")
            else:
                out.extend(differences(s, d, norm, here, top))
        return out
    if isinstance(source, list) and isinstance(delivered, list):
        if len(source) != len(delivered):
            return [f"{path}: {len(source)} items at the source, {len(delivered)} delivered"]
        return [line for n, (s, d) in enumerate(zip(source, delivered))
                for line in differences(s, d, norm, f"{path}.{n}", top)]
    if type(source) is type(delivered) and source == delivered:
        return []
    if norm.allowed(path, source, delivered, top):
        return []
    return [f"{path}: source {show(source)}, delivered {show(delivered)}"]


# -- records as the connector writes them ---------------------------------------------------
def record(tmp_path: Path, lines: list[str], **meta) -> RawRecord:
    """A "fhir-json" record from entry lines written as text (never through a parser)."""
    path = tmp_path / "r.ndjson"
    path.write_bytes("".join(line + "\n" for line in lines).encode())
    metadata = {"base_url": BASE, "fhir_version": "4.0.1", "patient_id": "p1", "stream": "x", "page": 0,
                "chunk": 0, "attachments": {}, **meta}
    return RawRecord(source="ehr", kind="fhir-json", media_type="application/fhir+ndjson", path=path,
                     sha256="0" * 64, size=path.stat().st_size, origin=f"{BASE}/x#page=0&chunk=0",
                     metadata=metadata)


def line(resource: str) -> str:
    rtype, rid = re.search(r'"resourceType":\s*"(\w+)"', resource)[1], re.search(r'"id":\s*"([^"]+)"', resource)[1]
    return f'{{"fullUrl":"{BASE}/{rtype}/{rid}","resource":{resource}}}'


def observation(oid: str, value: str = "5.4", when: str = "2024-01-02T03:04:05Z") -> str:
    return ('{"resourceType":"Observation","id":"%s","status":"final","code":{"text":"glucose"},'
            '"subject":{"reference":"Patient/p1"},"effectiveDateTime":"%s",'
            '"valueQuantity":{"value":%s,"unit":"mg/dL"},'
            '"referenceRange":[{"low":{"value":%s},"high":{"value":1.50e2}}]}' % (oid, when, value, value))


def mapped_json(items, rtype: str, source_id: str):
    """The JSON that travels for one resource (parsed with every number's text)."""
    want = resource_uuid(BASE, rtype, source_id)
    found = [i for i in items if not isinstance(i, InvalidResource) and i.resource is not None
             and getattr(i.resource, "id", None) == want]
    assert len(found) == 1, f"{rtype}/{source_id} not mapped: {items}"
    return tagged(found[0].json)


NORM = Normalized(BASE, "p1", CTX.patient_reference)


# -- item 1: decimals -------------------------------------------------------------------------
@pytest.mark.parametrize("value", DECIMALS)
def test_decimals_keep_their_text(tmp_path, value):
    source = observation("o1", value=value)
    items = map_fhir_json_items(record(tmp_path, [line(source)]), CTX)
    delivered = mapped_json(items, "Observation", "o1")
    assert delivered["valueQuantity"]["value"] == ("#", value)
    assert delivered["referenceRange"][0]["high"]["value"] == ("#", "1.50e2")
    assert differences(tagged(source), delivered, NORM) == []


def test_pretty_printed_pages_are_split_without_re_encoding(tmp_path):
    """A page served with line breaks (most servers pretty-print) becomes one line per
    entry with every byte of every value kept."""
    entries = ",\n".join('  {\n    "fullUrl": "%s/Observation/o%d",\n    "resource": %s\n  }'
                         % (BASE, n, observation(f"o{n}", value=v).replace(",", ",\n      "))
                         for n, v in enumerate(DECIMALS))
    page = tmp_path / "page.json"
    page.write_text('{\n  "resourceType": "Bundle",\n  "type": "searchset",\n  "entry": [\n%s\n  ]\n}\n' % entries)
    result = split_page(page, tmp_path / "out", seen={}, supporting=(), base_url=BASE,
                        chunk_resources=100, chunk_bytes=1 << 20, want_attachments=False)
    lines = [ln for chunk in result.chunks for ln in chunk.path.read_bytes().splitlines()]
    assert len(lines) == len(DECIMALS)
    for n, (raw, value) in enumerate(zip(lines, DECIMALS)):
        entry = tagged(raw)
        assert entry["resource"]["valueQuantity"]["value"] == ("#", value)
        assert differences(tagged(observation(f"o{n}", value=value)), entry["resource"], NORM) == []


# -- item 2: date-times ------------------------------------------------------------------------
@pytest.mark.parametrize("when", DATE_TIMES)
def test_date_times_keep_their_text(tmp_path, when):
    instant = when if "T" in when else "2024-01-02T03:04:05.715+00:00"  # an instant is a full time
    source = observation("o1", when=when)[:-1] + ',"issued":"%s"}' % instant
    cond = ('{"resourceType":"Condition","id":"c1","subject":{"reference":"Patient/p1"},'
            '"onsetPeriod":{"start":"%s","end":"%s"},"recordedDate":"%s"}' % (when, when, when))
    items = map_fhir_json_items(record(tmp_path, [line(source), line(cond)]), CTX)
    obs, condition = mapped_json(items, "Observation", "o1"), mapped_json(items, "Condition", "c1")
    assert obs["effectiveDateTime"] == when and obs["issued"] == instant
    assert condition["onsetPeriod"] == {"start": when, "end": when}
    assert differences(tagged(source), obs, NORM) == differences(tagged(cond), condition, NORM) == []


# -- item 3: contained resources ------------------------------------------------------------------
def test_distinct_contained_resources_are_never_merged(tmp_path):
    """Two contained resources with equal content but different ids stay two, a contained
    one equal to a resource of the record stays contained, and every reference points
    where the source said."""
    request = ('{"resourceType":"MedicationRequest","id":"mr1","status":"active","intent":"order",'
               '"subject":{"reference":"Patient/p1"},'
               '"contained":[{"resourceType":"Medication","id":"m1","code":{"text":"aspirin"}},'
               '{"resourceType":"Medication","id":"m2","code":{"text":"aspirin"}},'
               '{"resourceType":"Medication","id":"m3","code":{"text":"ibuprofen"}}],'
               '"medicationReference":{"reference":"#m2"},'
               '"dosageInstruction":[{"doseAndRate":[{"doseQuantity":{"value":1.0}}]}],'
               '"supportingInformation":[{"reference":"#m1"},{"reference":"#m3"},{"reference":"Medication/m3"}]}')
    standalone = '{"resourceType":"Medication","id":"m3","code":{"text":"ibuprofen"}}'
    items = map_fhir_json_items(record(tmp_path, [line(request), line(standalone)]), CTX)
    delivered = mapped_json(items, "MedicationRequest", "mr1")
    assert [c["id"] for c in delivered["contained"]] == ["m1", "m2", "m3"]
    assert delivered["medicationReference"] == {"reference": "#m2"}
    assert [r["reference"] for r in delivered["supportingInformation"]] == [
        "#m1", "#m3", f"urn:uuid:{resource_uuid(BASE, 'Medication', 'm3')}"]
    assert differences(tagged(request), delivered, NORM) == []


# -- item 8: R4 types that R4B lacks or structures differently ------------------------------------
R4_ONLY = [
    '{"resourceType":"MedicinalProduct","id":"mp1","name":[{"productName":"Aspirin 100 mg tablets"}],'
    '"marketingStatus":[{"country":{"text":"NL"},"status":{"text":"active"},'
    '"dateRange":{"start":"2019-01-01T00:00:00.000+01:00"}}]}',
    '{"resourceType":"MedicinalProductIngredient","id":"mpi1","role":{"text":"active"},'
    '"specifiedSubstance":[{"code":{"text":"acetylsalicylic acid"},"group":{"text":"1"},'
    '"strength":[{"presentation":{"numerator":{"value":100.0,"unit":"mg"},"denominator":{"value":1}}}]}]}',
    '{"resourceType":"EffectEvidenceSynthesis","id":"ees1","status":"active",'
    '"population":{"reference":"EvidenceVariable/ev1"},"exposure":{"reference":"EvidenceVariable/ev2"},'
    '"exposureAlternative":{"reference":"EvidenceVariable/ev3"},"outcome":{"reference":"EvidenceVariable/ev4"},'
    '"effectEstimate":[{"value":0.850,"precisionEstimate":[{"level":0.95,"from":0.70,"to":1.02}]}]}',
    '{"resourceType":"RiskEvidenceSynthesis","id":"res1","status":"active",'
    '"population":{"reference":"EvidenceVariable/ev1"},"outcome":{"reference":"EvidenceVariable/ev4"},'
    '"riskEstimate":{"value":0.0120,"denominatorCount":1000}}',
    '{"resourceType":"SubstanceSpecification","id":"ss1","code":[{"code":{"text":"x"}}],'
    '"moiety":[{"molecularFormula":"C9H8O4","amountQuantity":{"value":180.160,"unit":"g/mol"}}]}',
    '{"resourceType":"Evidence","id":"evi1","status":"active","exposureBackground":'
    '{"reference":"EvidenceVariable/ev1"},"exposureVariant":[{"reference":"EvidenceVariable/ev2"}]}',
]


def test_r4_types_absent_from_r4b_are_delivered_as_r4(tmp_path):
    lines = [line(r) for r in R4_ONLY] + [line(observation("o1"))]
    items = map_fhir_json_items(record(tmp_path, lines), CTX)
    assert [i.error for i in items if isinstance(i, InvalidResource)] == []
    for source in R4_ONLY:
        rtype, rid = json.loads(source)["resourceType"], json.loads(source)["id"]
        assert differences(tagged(source), mapped_json(items, rtype, rid), NORM) == []
    provenances = {ext.valueString: {t.reference for t in p.resource.target}
                   for p in items if getattr(p.resource, "__resource_type__", "") == "Provenance"
                   for ext in p.resource.extension if ext.url == CHECKED_EXT}
    r4 = {f"urn:uuid:{resource_uuid(BASE, json.loads(s)['resourceType'], json.loads(s)['id'])}"
          for s in R4_ONLY}
    r4_note = next(text for text in provenances if R4_CHECK in text)
    assert provenances[r4_note] == r4 and "absent from FHIR R4B or structured differently" in r4_note
    assert provenances[f"checked against {R4B_CHECK}"] == {
        f"urn:uuid:{resource_uuid(BASE, 'Observation', 'o1')}"}


def test_errors_name_the_check_that_failed(tmp_path):
    bad_r4 = '{"resourceType":"MedicinalProduct","id":"mp2","name":[{"productName":"x"}],"colour":"red"}'
    bad_r4b = '{"resourceType":"Observation","id":"o2","status":"final","code":{"text":"x"},"valueQuantity":{"value":"x"}}'
    unknown = '{"resourceType":"Spaceship","id":"s1"}'
    items = map_fhir_json_items(record(tmp_path, [line(bad_r4), line(bad_r4b), line(unknown)]), CTX)
    errors = {i.source_id: i.error for i in items if isinstance(i, InvalidResource)}
    assert R4_CHECK in errors["mp2"] and "colour" in errors["mp2"] and "red" not in errors["mp2"]
    assert R4B_CHECK in errors["o2"] and "valueQuantity.value" in errors["o2"]
    assert "not a FHIR R4 resource type" in errors["s1"]


def test_the_receiving_gateway_accepts_r4_types_absent_from_r4b():
    from gateway.inbound.receive import UnprocessableBundle, _validate

    entries = [{"fullUrl": f"urn:uuid:{uuid.uuid4()}", "resource": json.loads(r),
                "request": {"method": "POST", "url": json.loads(r)["resourceType"]}} for r in R4_ONLY]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries,
              "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"}}
    checked = _validate(json.dumps(bundle).encode())
    assert [e["resource"]["resourceType"] for e in checked.data["entry"]] == \
        [json.loads(r)["resourceType"] for r in R4_ONLY]
    assert checked.by_models == len(R4_ONLY)  # the schema check leaves these types to R4's own
    entries[0]["resource"]["colour"] = "red"
    with pytest.raises(UnprocessableBundle, match=f"entry.0.resource.*{re.escape(R4_CHECK)}"):
        _validate(json.dumps(bundle).encode())


def _r4_types() -> dict[str, type]:
    from fhirclient.models.fhirelementfactory import FHIRElementFactory
    from fhirclient.models.resource import Resource

    found = {}
    for name, module in re.findall(r'if "(\w+)" == resource_type:\s+from \. import (\w+)',
                                   inspect.getsource(FHIRElementFactory)):
        klass = getattr(importlib.import_module(f"fhirclient.models.{module}"), name, None)
        if isinstance(klass, type) and issubclass(klass, Resource) and klass.resource_type == name \
                and name not in ("Resource", "DomainResource"):
            found[name] = klass
    return found


def _r4b_fields(cls) -> dict[str, tuple[bool, type | None]]:
    out = {}
    for name, f in cls.model_fields.items():
        many, sub, stack = False, None, [f.annotation]
        while stack:
            ann = stack.pop()
            many |= typing.get_origin(ann) is list
            getter = getattr(ann, "get_model_klass", None)
            if getter is not None:
                sub = getter()
            stack.extend(typing.get_args(ann))
        out[f.alias or name] = (many, sub)
    return out


def _differs(r4, r4b, seen: set) -> bool:
    """Whether R4B's model would refuse JSON valid under R4's definition: an element R4
    has that R4B lacks, or a list in R4 that R4B allows once. Extensions whose value is a
    Meta (an R4 open type R4B dropped) are left out: every type has them."""
    if (r4, r4b) in seen:
        return False
    seen.add((r4, r4b))
    fields = _r4b_fields(r4b)
    for _name, js, typ, many, _of_many, _required in r4.elementProperties(r4.__new__(r4)):
        if js not in fields:
            if js.endswith("Meta"):
                continue
            return True
        b_many, b_sub = fields[js]
        if many and not b_many:
            return True
        if hasattr(typ, "elementProperties") and b_sub is not None \
                and "resourceType" not in b_sub.model_fields and _differs(typ, b_sub, seen):
            return True
    return False


def test_r4_defined_types_are_exactly_those_r4b_cannot_read():
    """R4_DEFINED is derived from both definitions: every R4 type whose JSON R4B's model
    would refuse (absent from R4B, or an element R4B lacks or takes only once)."""
    derived = set()
    for name, klass in _r4_types().items():
        try:
            r4b = model_class(name)
        except KeyError:
            derived.add(name)
            continue
        if _differs(klass, r4b, set()):
            derived.add(name)
    assert derived == set(R4_DEFINED)


# -- the exact JSON both sides write and hash ---------------------------------------------------
def test_json_text_round_trips_every_number_form():
    text = '{"a":[%s],"d":"2024-01-02T03:04:05.715+00:00"}' % ",".join(DECIMALS)
    assert jsontext.dumps(jsontext.loads(text.encode())) == text.encode()
    with pytest.raises(TypeError):
        json.dumps(jsontext.loads(text))  # a writer that would lose the text fails loudly
    canonical = jsontext.dumps(jsontext.loads('{"b":1.00,"a":-0}'), sort_keys=True)
    assert canonical == b'{"a":-0,"b":1.00}'


def test_entry_hashes_carry_the_text_and_agree_on_both_sides():
    sent = b'{"resourceType":"Observation","valueQuantity":{"value":1.00}}'
    written = jsontext.dumps(jsontext.loads(sent))  # the sender's stored payload, written again
    assert entry_hash(jsontext.loads(sent)) == entry_hash(jsontext.loads(written))
    assert entry_hash(jsontext.loads(sent)) != entry_hash(jsontext.loads(sent.replace(b"1.00", b"1.0")))
    assert entry_hash({"a": 1.5}) == hashlib.sha256(b'{"a":1.5}').hexdigest()


def test_validation_never_changes_what_travels(tmp_path):
    """The check reads the JSON; it does not rewrite it (R4B would pad `.715Z`)."""
    source = observation("o1", value="1.00", when="2024-01-02T03:04:05.715Z")
    resource = jsontext.loads(source)
    before = jsontext.dumps(resource)
    model = check(resource)
    assert jsontext.dumps(resource) == before
    assert model.effectiveDateTime is not None
    items = map_record(record(tmp_path, [line(source)]), CTX)
    assert b'"effectiveDateTime":"2024-01-02T03:04:05.715Z"' in next(i.json for i in items if i.json)
