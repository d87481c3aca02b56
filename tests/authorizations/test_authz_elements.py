"""Every HIPAA 164.508(c) core element (and every claim) is required: without it the
authorization is refused with a message naming the element."""
from __future__ import annotations

import copy

import pytest

from tests.authorizations.authz_support import ISSUER, NOW
from gateway.trust.authorizations import (REQUIRED_ELEMENTS, example_claims,
                                          verify_authorization)
from gateway.errors import AuthorizationInvalid

# What 45 CFR 164.508(c) and our format require, written out independently of the code's
# list, so dropping an element from REQUIRED_ELEMENTS fails here.
EXPECTED = {
    "iss", "jti", "iat", "nbf", "exp",
    "patient", "patient.name", "patient.name.family", "patient.birthDate", "patient.identifiers",
    "signature", "signature.signedBy", "signature.name", "signature.date",
    "information", "information.dataClasses",
    "disclosers", "recipient", "recipient.id", "recipient.name", "recipient.endpoint",
    "purpose", "expiration",
    "statements", "statements.rightToRevoke", "statements.treatmentConditioned",
    "statements.conditioning", "statements.redisclosure",
    "consent",
}


def without(claims: dict, dotted: str) -> dict:
    claims = copy.deepcopy(claims)
    *parents, last = dotted.split(".")
    node = claims
    for part in parents:
        node = node[part]
    del node[last]
    return claims


def refusal(jws, trust) -> str:
    with pytest.raises(AuthorizationInvalid) as info:
        verify_authorization(jws, trust, now=NOW)
    return str(info.value)


def test_required_elements_are_the_hipaa_core_elements():
    assert set(REQUIRED_ELEMENTS) == EXPECTED


@pytest.mark.parametrize("element", REQUIRED_ELEMENTS)
def test_each_required_element_missing(claims, sign, trust, element):
    msg = refusal(sign(without(claims, element)), trust)
    if element == "iss":
        assert msg == "authorization is missing iss"
    else:
        assert f"authorization is missing {element}" in msg.split("; ")


@pytest.mark.parametrize("element", ["disclosers[0].id", "disclosers[0].name", "disclosers[0].endpoints",
                                     "recipient.endpoint.type", "recipient.endpoint.address",
                                     "patient.identifiers[0].system", "patient.identifiers[0].value"])
def test_nested_required_elements_missing(claims, sign, trust, element):
    path = element.replace("[0]", ".0").split(".")
    broken = copy.deepcopy(claims)
    node = broken
    for part in path[:-1]:
        node = node[int(part)] if part.isdigit() else node[part]
    del node[path[-1]]
    assert f"authorization is missing {element}" in refusal(sign(broken), trust).split("; ")


def test_representative_must_state_authority(sign, trust):
    claims = example_claims(ISSUER, "auth-rep", representative_authority="health care power of attorney",
                            now=NOW)
    assert verify_authorization(sign(claims), trust, now=NOW).claims["signature"]["authority"]
    del claims["signature"]["authority"]
    assert refusal(sign(claims), trust) == ("authorization is missing signature.authority "
                                            "(required when a representative signed)")


def test_expiration_needs_a_date_or_an_event(claims, sign, trust):
    assert verify_authorization(sign(without(claims, "expiration.event")), trust, now=NOW)
    assert verify_authorization(sign(without(claims, "expiration.date")), trust, now=NOW)
    claims["expiration"] = {}
    assert refusal(sign(claims), trust) == "authorization is missing expiration.date or expiration.event"


@pytest.mark.parametrize("element, value, expected", [
    ("statements.rightToRevoke", "   ", "authorization has an invalid statements.rightToRevoke: is blank"),
    ("purpose", "", "authorization has an invalid purpose: is empty"),
    ("statements.treatmentConditioned", "no",
     "authorization has an invalid statements.treatmentConditioned: Input should be a valid boolean"),
    ("patient.birthDate", "1970-02-30", "authorization has an invalid patient.birthDate: is not a calendar date"),
    ("patient.birthDate", "01/02/1970", "authorization has an invalid patient.birthDate: must be a date YYYY-MM-DD"),
    ("patient.identifiers", [], "authorization has an invalid patient.identifiers: must list at least one entry"),
    ("disclosers", [], "authorization has an invalid disclosers: must list at least one entry"),
    ("information.dataClasses", [], "authorization has an invalid information.dataClasses: must list at least one entry"),
    ("exp", "2026-04-01", "authorization has an invalid exp: Input should be a valid integer"),
    ("exp", 10 ** 20, "authorization has an invalid exp: Input should be less than or equal to 253402300799"),
    ("nbf", -1, "authorization has an invalid nbf: Input should be greater than or equal to 0"),
    ("iat", 1.5, "authorization has an invalid iat: Input should be a valid integer"),
    ("jti", "has spaces", "authorization has an invalid jti: String should match pattern"),
    ("signature.signedBy", "neighbour", "authorization has an invalid signature.signedBy: Input should be 'patient' or 'representative'"),
    ("patient.name.family", "a\x00b", "authorization has an invalid patient.name.family: contains control characters"),
    ("recipient.endpoint", {"type": "fhir", "address": "ftp://x"},
     "authorization has an invalid recipient.endpoint.address: a fhir endpoint needs an http(s) URL"),
    ("information.dataClasses", ["labs", "xrays"], "authorization has an invalid information.dataClasses: unknown data classes ['xrays']"),
    ("information.dataClasses", ["labs", "labs"], "authorization has an invalid information.dataClasses: lists a data class twice"),
])
def test_wrong_values_are_named(claims, sign, trust, element, value, expected):
    *parents, last = element.split(".")
    node = claims
    for part in parents:
        node = node[part]
    node[last] = value
    assert expected in refusal(sign(claims), trust)


def test_misspelt_element_is_reported_as_unknown_and_missing(claims, sign, trust):
    claims["statements"]["rightToRevok"] = claims["statements"].pop("rightToRevoke")
    problems = refusal(sign(claims), trust).split("; ")
    assert "authorization is missing statements.rightToRevoke" in problems
    assert "authorization has an unknown element statements.rightToRevok" in problems


def test_all_problems_are_listed_at_once(claims, sign, trust):
    broken = without(without(claims, "purpose"), "statements.redisclosure")
    problems = refusal(sign(broken), trust).split("; ")
    assert set(problems) == {"authorization is missing purpose", "authorization is missing statements.redisclosure"}


@pytest.mark.parametrize("change, expected", [
    (lambda c: c.update(nbf=c["exp"]), "authorization has an invalid nbf: not before exp"),
    (lambda c: c.update(iat=c["exp"] + 1), "authorization has an invalid iat: after exp"),
    (lambda c: c["expiration"].update(date="2026-03-15"), "authorization has an invalid exp: after expiration.date"),
    (lambda c: c["signature"].update(date="2026-06-01"), "authorization has an invalid signature.date: after iat"),
    (lambda c: c["information"].update(dateRange={"start": "2024-01-01", "end": "2023-01-01"}),
     "authorization has an invalid information.dateRange: start after end"),
    (lambda c: c["disclosers"].append(copy.deepcopy(c["disclosers"][0])),
     "authorization has an invalid disclosers: an id appears twice"),
])
def test_inconsistent_elements(claims, sign, trust, change, expected):
    change(claims)
    assert expected in refusal(sign(claims), trust).split("; ")
