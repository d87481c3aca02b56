"""Matching rules: automatic only when unambiguous, review with reasons otherwise."""
from __future__ import annotations

from datetime import date

from connectors.fax.cover import CoverCode
from connectors.fax.match import Evidence, TransferDescriptor, match_fax

A = TransferDescriptor("tr-a", "Clara Moreau", date(1970, 3, 5), "RQ-100001")
B = TransferDescriptor("tr-b", "Jonas Haddad", date(1982, 11, 20), "RQ-100002")
A2 = TransferDescriptor("tr-a2", "Clara Moreau", date(1970, 3, 5), "RQ-100003")  # same patient again
OPEN = [A, B]


def text(*pages):
    return Evidence(text=tuple(pages), text_source="layer")


def test_verified_code_wins_and_its_page_is_removed():
    ev = Evidence(codes=(CoverCode("tr-b", True, "x"),), code_pages=(0,), text=("Patient Clara Moreau",))
    result = match_fax(ev, OPEN)
    assert (result.transfer_id, result.method, result.cover_pages) == ("tr-b", "qr", (0,))


def test_forged_code_goes_to_review_even_when_text_matches():
    ev = Evidence(codes=(CoverCode("tr-a", False, "x"),), code_pages=(0,),
                  text=("Clara Moreau born 1970-03-05 RQ-100001",), text_source="layer")
    result = match_fax(ev, OPEN)
    assert result.method == "review" and "HMAC" in result.reasons[0]


def test_codes_of_two_transfers_or_a_closed_one_go_to_review():
    two = Evidence(codes=(CoverCode("tr-a", True, "x"), CoverCode("tr-b", True, "y")), code_pages=(0, 1))
    assert match_fax(two, OPEN).method == "review"
    closed = Evidence(codes=(CoverCode("tr-z", True, "x"),), code_pages=(0,))
    result = match_fax(closed, OPEN)
    assert result.method == "review" and "not open" in result.reasons[0]


def test_sidecar_by_request_id_and_by_transfer_id():
    assert match_fax(Evidence(sidecar={"request_id": "rq 100002"}), OPEN).transfer_id == "tr-b"
    assert match_fax(Evidence(sidecar={"transfer_id": "tr-a"}), OPEN).method == "sidecar"
    unknown = match_fax(Evidence(sidecar={"request_id": "RQ-999999"}), OPEN)
    assert unknown.method == "review"


def test_text_needs_two_facts():
    assert match_fax(text("Patient: Moreau, Clara  DOB: 03/05/1970"), OPEN).transfer_id == "tr-a"
    assert match_fax(text("Re: RQ-100002, patient Haddad Jonas"), OPEN).transfer_id == "tr-b"
    assert match_fax(text("Clara Moreau 5 March 1970"), OPEN).transfer_id == "tr-a"
    assert match_fax(text("Patient: Clara Moreau"), OPEN).method == "review"  # name alone
    assert match_fax(text("RQ-100001"), OPEN).method == "review"  # request id alone
    assert match_fax(text("nothing useful here at all"), OPEN).method == "review"


def test_same_patient_with_two_open_transfers():
    ambiguous = match_fax(text("Clara Moreau DOB 1970-03-05"), [A, A2, B])
    assert ambiguous.method == "review" and set(ambiguous.candidates) >= {"tr-a", "tr-a2"}
    by_request = match_fax(text("Clara Moreau DOB 1970-03-05 request RQ-100003"), [A, A2, B])
    assert by_request.transfer_id == "tr-a2"


def test_two_patients_in_one_fax_go_to_review():
    result = match_fax(text("RQ-100001 Clara Moreau 1970-03-05", "Jonas Haddad 11/20/1982"), OPEN)
    assert result.method == "review" and any("also names" in r for r in result.reasons)


def test_request_id_inside_a_longer_number_does_not_count():
    assert match_fax(text("ref XRQ1000011 Clara Moreau"), OPEN).method == "review"


def test_no_text_says_why():
    result = match_fax(Evidence(text_source="ocr-unavailable"), OPEN)
    assert result.method == "review" and "OCR is not installed" in result.reasons[0]


def test_reasons_never_carry_patient_data():
    result = match_fax(text("Clara Moreau", "Jonas Haddad 1982-11-20"), OPEN)
    joined = " ".join(result.reasons)
    for secret in ("Clara", "Moreau", "Haddad", "1970", "1982"):
        assert secret not in joined
