"""How a received bundle's entries are validated: the schema check first (it can only
accept), the R4B models for everything it does not accept, so a delivered bundle is
refused exactly when, and with the message, the models give."""
from __future__ import annotations

import json

import pytest

from gateway.exchange.ids import canonical, entry_hash
from gateway.inbound import receive
from mappings.fhir.schema_check import schema_check
from mappings.fhir.validate import ResourceInvalid, check
from tests.test_receive import PATIENT, bundle, peer, post, receiver, sender_keys  # noqa: F401

OBSERVATION = {"resourceType": "Observation", "status": "final", "code": {"text": "glucose"},
               "subject": {"reference": PATIENT}, "effectiveDateTime": "2024-03-01T10:00:00Z",
               "valueQuantity": {"value": 5.4, "unit": "mmol/L"}}


def _with(*resources: dict) -> bytes:
    data = json.loads(bundle())
    data["entry"] += [{"fullUrl": f"urn:uuid:6e0b7c1e-3f38-4a8f-9d7e-0000000002{n:02d}",
                       "resource": r, "request": {"method": "POST", "url": r["resourceType"]}}
                      for n, r in enumerate(resources)]
    return json.dumps(data).encode()


@pytest.mark.parametrize("change", [
    {"effectiveDateTime": "2024-13-45"},  # no such day
    {"valueQuantity": {"value": "five"}},  # not a decimal
    {"focal": True},  # no such element
])
def test_an_invalid_resource_is_refused_with_the_models_error(receiver, peer, sender_keys,  # noqa: F811
                                                              change):
    """The schema check covers Observation (it accepts the valid one) and does not accept
    the invalid one, so the R4B models decide: refused, with their words."""
    invalid = {**OBSERVATION, **change}
    assert schema_check().accepts(canonical(OBSERVATION))
    assert not schema_check().accepts(canonical(invalid))
    with pytest.raises(ResourceInvalid) as models:
        check(invalid)
    r = post(receiver.test_client(), peer, _with(OBSERVATION, invalid), sender_keys)
    assert r.status_code == 422, r.get_json()
    assert r.get_json()["issue"][0]["diagnostics"] == f"invalid Bundle at entry.4.resource: {models.value}"


def test_what_the_schema_check_accepts_skips_the_models():
    """Every entry of a plain bundle is accepted by the schema check; one it leaves to the
    models (text beyond ASCII) is checked by them and passes; the entry hashes are those
    of each resource's canonical JSON."""
    plain = receive._validate(_with(OBSERVATION))
    assert (plain.by_schema, plain.by_models) == (4, 0)
    accented = {**OBSERVATION, "code": {"text": "glucose à jeun"}}
    mixed = receive._validate(_with(OBSERVATION, accented))
    assert (mixed.by_schema, mixed.by_models) == (4, 1)
    assert mixed.hashes == {e["fullUrl"]: entry_hash(e["resource"]) for e in mixed.data["entry"]}
    assert len(mixed.hashes) == 5


def test_only_entries_that_name_an_upload_are_looked_at_for_one():
    attachment = {"contentType": "application/pdf", "url": "Binary/abc"}
    document = {"resourceType": "DocumentReference", "status": "current",
                "subject": {"reference": PATIENT}, "content": [{"attachment": attachment}]}
    checked = receive._validate(_with(OBSERVATION, document))
    assert checked.may_reference_uploads == {4}


def test_an_invalid_envelope_is_refused_with_the_models_error(receiver, peer, sender_keys):  # noqa: F811
    """The envelope (the Bundle without its entries' resources) meets the schema check
    first too; one it does not accept, the Bundle model words."""
    from fhir.resources.R4B.bundle import Bundle
    from pydantic import ValidationError

    data = json.loads(_with(OBSERVATION))
    data["timestamp"] = "2024-02-30T10:00:00Z"  # no such day
    envelope = {**data, "entry": [{k: v for k, v in e.items() if k != "resource"} for e in data["entry"]]}
    assert not schema_check().accepts(canonical(envelope))
    with pytest.raises(ValidationError) as model:
        Bundle.model_validate(envelope)
    r = post(receiver.test_client(), peer, json.dumps(data).encode(), sender_keys)
    assert r.status_code == 422, r.get_json()
    first = model.value.errors()[0]
    assert r.get_json()["issue"][0]["diagnostics"] == (
        f"invalid Bundle at {'.'.join(map(str, first['loc']))}: {first['msg']} "
        f"({model.value.error_count()} problem(s))")
    assert schema_check().accepts(canonical({**envelope, "timestamp": "2024-02-28T10:00:00Z"}))


@pytest.mark.parametrize("name", ["", "abc:urn:uuid:6e0b7c1e-3f38-4a8f-9d7e-000000000001",
                                  "x" * 300, "\u00e9\u4e2d:\U0001f600"])
def test_response_locations_are_uuid5_of_the_entry(name):
    import uuid

    assert receive._uuid5_url(name) == str(uuid.uuid5(uuid.NAMESPACE_URL, name))
