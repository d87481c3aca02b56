"""The resources the sender writes into every bundle about its records (a Provenance per
source, the summary Composition) are what the R4B models write of them, though the models
check only one of each repeated shape (bundles.py `_provenance`, summary.py `_probes`)."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from types import SimpleNamespace

from fhir.resources.R4B.composition import Composition
from fhir.resources.R4B.provenance import Provenance

from gateway.exchange.ids import urn
from gateway.outbound import summary
from gateway.outbound.bundles import _provenance, _Shape
from gateway.outbound.units import StreamedBinary, Unit


def written(model, body: dict) -> bytes:
    return model.model_validate(body).model_dump_json().encode()


def test_a_provenance_is_what_the_model_writes_of_it():
    targets = [f"urn:uuid:00000000-0000-4000-8000-{n:012d}" for n in range(50)]
    origins = ["https://ehr.example/fhir/everything#page=0&chunk=0"] * 20 + \
              [" fax 1.pdf ", "f\u00e4x\u00a02.pdf", "x" * 1500] * 10
    recorded = datetime(2026, 3, 1, 12, 30, 5, 123456, tzinfo=timezone.utc).isoformat()
    ours = _provenance("ehr", "Hospital A", targets, origins, recorded, "urn:uuid:consent")
    whole = {"resourceType": "Provenance", "target": [{"reference": u} for u in targets],
             "recorded": recorded, "policy": ["urn:uuid:consent"],
             "agent": [{"who": {"display": "Hospital A"}}],
             "entity": [{"role": "source", "what": {"identifier": {
                 "system": "urn:records-gateway:origin:ehr", "value": o[:1000]}}} for o in origins]}
    assert json.dumps(ours).encode() == json.dumps(json.loads(written(Provenance, whole))).encode()
    assert ours["recorded"].endswith("Z")  # the model's way of writing the instant, kept


def _unit(n: int, resource: dict, date: str = "2024-01-01", data_class: str = "labs") -> Unit:
    url = f"urn:uuid:00000000-0000-4000-8000-{n:012d}"
    return Unit(date=date, full_url=url, data_class=data_class,
                entries=[{"fullUrl": url, "resource": resource}])


def test_the_summary_composition_is_what_the_model_writes_of_it():
    units = [_unit(n, {"resourceType": "Observation", "code": {"text": ["Glucose", "HbA1c ", "Na\u00efve"][n % 3]},
                       "identifier": [{"value": f"obs-{n}"}]}) for n in range(60)]
    units += [_unit(100 + n, {"resourceType": "DocumentReference", "type": {"text": "Note"},
                              "masterIdentifier": {"system": "urn:x", "value": f"d{n}"}},
                    data_class="notes") for n in range(5)]
    units.append(Unit(date="", full_url="urn:uuid:b", entries=[StreamedBinary("urn:uuid:b", "k", "x", 1)]))
    part_of = {u.full_url: (2 if n % 7 == 0 else 1) for n, u in enumerate(units)}  # some in part 2
    t = SimpleNamespace(id="t-1", created_at=datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc))
    svc = SimpleNamespace(settings=SimpleNamespace(organization="Hospital A"))
    claims = {"patient": {"name": {"family": "Doe", "given": ["J"]}, "birthDate": "1970-01-01"},
              "questions": "Is surgery needed?"}
    built = summary.build(svc, t, _Shape(put=False), units, part_of, "urn:uuid:p", claims, urn)
    composition = built[0].entries[0]["resource"]
    sections = [s for s in composition["section"] if "entry" in s]
    assert [len(s["entry"]) for s in sections] == [60, 5]
    # each section's entries are those of every unit, as the model writes the whole resource
    members = summary._sections(units)
    for section, unit_list in zip(sections, members.values()):
        section_refs = [summary.reference_to(u, part_of, u.entries[0]["resource"]) for u in unit_list]
        whole = json.loads(written(Composition, {**composition, "section": [{**section, "entry": section_refs}]}))
        assert whole["section"][0]["entry"] == section["entry"]
        assert [list(e) for e in section["entry"]] == [list(e) for e in whole["section"][0]["entry"]]
    assert json.loads(written(Composition, composition)) == composition
