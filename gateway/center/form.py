"""The patient's request form: every field checked, then the authorization's claims.

The form is the same for the web page and the API (`POST /center/requests`): flat
names, strings or lists of strings. `check` collects every problem, one plain message a
field (never the value: it may be patient data), and raises one InvalidInput whose
`fields` detail maps each field to its message, so a page can show each beside its field.
`claims` builds what the intake signs, in the format gateway/trust/authorizations
verifies (schema.py), with the patient's questions carried beside the elements.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta, timezone

from gateway.config import CenterConfig, Settings
from gateway.errors import InvalidInput
from mappings import DATA_CLASSES
from mappings.consent import build_consent

MAX_QUESTIONS = 4000
EMAIL = re.compile(r"^[^@\s<>,;\"]{1,64}@[^@\s<>,;\"]{1,190}\.[^@\s<>,;\".]{2,}$")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")  # newlines are fine in questions only
ACKNOWLEDGEMENTS = ("ack_revoke", "ack_conditioning", "ack_redisclosure")

# 45 CFR 164.508(c)(2), in plain language: shown on the form, acknowledged, signed
STATEMENTS = {
    "rightToRevoke": ("You can take back (revoke) this permission at any time, on your status "
                      "page or in writing to the second-opinion center. Taking it back stops "
                      "what has not been sent yet; it cannot undo what was already sent."),
    "treatmentConditioned": False,
    "conditioning": ("Your treatment, payment, enrollment or eligibility for benefits will not "
                     "depend on whether you sign this form."),
    "redisclosure": ("Once your records are sent, the recipient may share them again, and "
                     "federal privacy rules may no longer protect them."),
}
EVENT = "the end of the second-opinion review"


@dataclass
class Form:
    """A checked form: the values the authorization and the PDF are made from."""

    family: str
    given: str
    birth_date: date
    identifier_system: str
    identifier_value: str
    email: str
    providers: list[str]
    data_classes: list[str]
    date_start: date | None
    date_end: date | None
    purpose: str
    expiration: date
    questions: str
    signed_by: str
    signature_name: str
    signature_date: date
    authority: str | None
    errors: dict[str, str] = field(default_factory=dict)

    @property
    def patient_name(self) -> str:
        return " ".join(p for p in (self.given, self.family) if p)


def _text(data: dict, name: str, errors: dict, label: str, required: bool = True,
          limit: int = 200) -> str:
    value = data.get(name)
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            errors[name] = f"enter {label}"
        return ""
    if not isinstance(value, str):
        errors[name] = f"{label} must be text"
        return ""
    value = value.strip()
    if len(value) > limit:
        errors[name] = f"{label} is longer than {limit} characters"
    elif CONTROL.search(value) or (name != "questions" and "\n" in value):
        errors[name] = f"{label} contains characters a form cannot hold"
    return value


def _day(data: dict, name: str, errors: dict, label: str, required: bool = True) -> date | None:
    text = _text(data, name, errors, label, required, 10)
    if not text or name in errors:
        return None
    try:
        if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", text):
            raise ValueError
        return date.fromisoformat(text)
    except ValueError:
        errors[name] = f"{label} must be a date like 2026-01-31"
        return None


def _list(data: dict, name: str) -> list:
    value = data.get(name)
    if value is None or value == "":
        return []
    return [value] if isinstance(value, str) else list(value) if isinstance(value, list) else [None]


def _ticked(value) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("on", "true", "yes", "1"))


def check(data: dict, center: CenterConfig, today: date | None = None) -> Form:
    """The form's values, or InvalidInput naming every field that is wrong and why."""
    today = today or datetime.now(timezone.utc).date()
    e: dict[str, str] = {}
    if not isinstance(data, dict):
        raise InvalidInput("the form must be a set of fields")
    family = _text(data, "family_name", e, "the patient's family name")
    given = _text(data, "given_name", e, "the patient's given name", required=False)
    birth = _day(data, "birth_date", e, "the date of birth")
    if birth is not None and (birth > today or birth < date(1880, 1, 1)):
        e["birth_date"] = "the date of birth must be a real date in the past"
    system = _text(data, "identifier_system", e, "who issued the patient's identifier", limit=255)
    value = _text(data, "identifier_value", e, "the patient's identifier (such as a medical "
                  "record number)", limit=100)
    email = _text(data, "email", e, "an email address for the status link", limit=254)
    if email and "email" not in e and not EMAIL.match(email):
        e["email"] = "enter an email address like name@example.org"
    providers = _list(data, "providers")
    if not providers:
        e["providers"] = "choose at least one place that holds the patient's records"
    elif any(p not in center.providers for p in providers) or len(set(providers)) != len(providers):
        e["providers"] = "choose places from the list (each once)"
    classes = _list(data, "data_classes")
    if not classes:
        e["data_classes"] = "choose which kinds of records to release (or all of them)"
    elif any(c not in DATA_CLASSES | {"all"} for c in classes) or len(set(classes)) != len(classes):
        e["data_classes"] = "choose kinds of records from the list (each once)"
    elif "all" in classes and len(classes) > 1:
        e["data_classes"] = "choose either all records or some kinds, not both"
    start = _day(data, "date_start", e, "the first date of records", required=False)
    end = _day(data, "date_end", e, "the last date of records", required=False)
    if start and end and start > end:
        e["date_end"] = "the last date of records must not be before the first"
    purpose = _text(data, "purpose", e, "the purpose of the release", limit=1000)
    expiration = _day(data, "expiration_date", e, "the date this permission ends")
    if expiration is not None and not today < expiration <= today + timedelta(days=center.valid_days):
        e["expiration_date"] = (f"the permission must end after today and within "
                                f"{center.valid_days} days")
    for name in ACKNOWLEDGEMENTS:
        if not _ticked(data.get(name)):
            e[name] = "read this statement and tick the box to say you understand it"
    questions = _text(data, "questions", e, "your questions", required=False, limit=MAX_QUESTIONS)
    signed_by = data.get("signed_by")
    if signed_by not in ("patient", "representative"):
        e["signed_by"] = "say who signs: the patient or their representative"
    name = _text(data, "signature_name", e, "the signer's full name (your typed signature)")
    signed_on = _day(data, "signature_date", e, "the date of signature")
    if signed_on is not None and abs((signed_on - today).days) > 1:
        e["signature_date"] = "the date of signature must be today"
    authority = None
    if signed_by == "representative":
        authority = _text(data, "representative_authority", e,
                          "the representative's authority (such as health care proxy)")
    if e:
        raise InvalidInput("the form has problems: " + "; ".join(f"{k}: {v}" for k, v in e.items()),
                           fields=e)
    return Form(family, given, birth, system, value, email, providers, classes, start, end,
                purpose, expiration, questions, signed_by, name, signed_on, authority)


def claims(form: Form, settings: Settings, jti: str, now: datetime,
           signed_form: bytes | None = None, form_sha256_b64: str | None = None) -> dict:
    """The authorization payload for this form (schema.py), before signing."""
    center = settings.center
    now = now.astimezone(timezone.utc).replace(microsecond=0)
    iat = int(now.timestamp())
    exp = int(datetime.combine(form.expiration, time(23, 59, 59), timezone.utc).timestamp())
    patient = {"name": {"family": form.family, **({"given": [form.given]} if form.given else {})},
               "birthDate": form.birth_date.isoformat(),
               "identifiers": [{"system": form.identifier_system, "value": form.identifier_value}]}
    signature = {"signedBy": form.signed_by, "name": form.signature_name,
                 "date": min(form.signature_date, now.date()).isoformat()}
    if form.authority:
        signature["authority"] = form.authority
    information: dict = {"dataClasses": sorted(form.data_classes)}
    rng = {k: v for k, v in (("start", form.date_start), ("end", form.date_end)) if v}
    if rng:
        information["dateRange"] = {k: v.isoformat() for k, v in rng.items()}
    disclosers = [{"id": p.organization, "name": p.name, "endpoints": list(p.endpoints)}
                  for p in (center.providers[n] for n in form.providers)]
    recipient = {"id": settings.organization, "name": center.name,
                 "endpoint": {"type": "gateway", "address": settings.base_url}}
    out = {"iss": center.issuer, "jti": jti, "iat": iat, "nbf": iat, "exp": exp,
           "patient": patient, "signature": signature, "information": information,
           "disclosers": disclosers, "recipient": recipient, "purpose": form.purpose,
           "expiration": {"date": form.expiration.isoformat(), "event": EVENT},
           "statements": dict(STATEMENTS)}
    if form.questions:
        out["questions"] = form.questions  # read first in the summary (outbound/summary.py)
    out["consent"] = build_consent(
        patient_identifier=patient["identifiers"][0], signed_on=date.fromisoformat(signature["date"]),
        not_before=now, expires_at=datetime.fromtimestamp(exp, timezone.utc),
        disclosers=disclosers, recipient=recipient, data_classes=form.data_classes,
        purpose=form.purpose, date_range=rng or None, form_sha256_b64=form_sha256_b64,
        form_size=len(signed_form) if signed_form is not None else None, consent_id=jti)
    return out
