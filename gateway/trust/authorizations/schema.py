"""The release authorization's payload: its schema and its validation.

An authorization is a compact JWS (RFC 7515), protected header
`{"alg": "EdDSA" | "ES256", "kid": "<issuer key id>", "typ": "authorization+jwt"}`,
signed by a trusted issuer (see gateway/trust/issuers.py), at most `MAX_JWS_BYTES` (5 MiB)
long. Its payload is one UTF-8 JSON object (keys not listed are ignored at the top
level and refused inside the sections, so a misspelt element is reported):

```
iss        str      issuer id, must be in the trust store with the header's kid
jti        str      the authorization id, [A-Za-z0-9._:-]{1,64}
iat, nbf, exp  int  NumericDate seconds (UTC); iat <= exp, nbf < exp
patient                                     -- 164.508(c): whose information
  name         {"family": str, "given"?: [str]}
  birthDate    "YYYY-MM-DD"
  identifiers  [{"system": str, "value": str}, ...]  at least one (MRN, national id)
signature                                   -- 164.508(c)(1)(vi): signature and date
  signedBy     "patient" | "representative"
  name         str   who signed
  date         "YYYY-MM-DD"   not after iat's date
  authority    str   required when signedBy is "representative" (e.g. "health care proxy")
information                                 -- 164.508(c)(1)(i): a specific description
  dataClasses  [str]   from mappings.DATA_CLASSES, or ["all"]; no duplicates
  dateRange?   {"start"?: "YYYY-MM-DD", "end"?: "YYYY-MM-DD"}  clinical dates, inclusive
  description? str
disclosers  [...]  at least one, unique ids      -- (c)(1)(ii): who may disclose
  id, name     str
  endpoints    [{"type": ENDPOINT_TYPE, "address": str}, ...]  at least one
recipient                                    -- (c)(1)(iii): to whom
  id, name     str
  endpoint     {"type": ENDPOINT_TYPE, "address": str}
purpose      str                                -- (c)(1)(iv)
expiration   {"date"?: "YYYY-MM-DD", "event"?: str}  at least one; exp must not be
             after the end of expiration.date (UTC)   -- (c)(1)(v)
statements                                      -- (c)(2)
  rightToRevoke          str   the right to revoke in writing and how to do it
  treatmentConditioned   bool  whether treatment/payment/enrollment is conditioned on signing
  conditioning           str   the statement shown to the patient about that
  redisclosure           str   that disclosed information may be redisclosed and no
                               longer protected
consent      FHIR R4 Consent JSON (mappings/consent.py says what it must contain and
             how it must agree with the elements above)
attachment?  {"contentType": "application/pdf", "data": base64 PDF, "title"?: str}
             the signed form itself; base64 inside base64url, so under the 5 MiB cap a
             form can be up to about 2.8 MB (a scanned form should be compressed)
```

ENDPOINT_TYPE is one of "pdf-folder", "fhir", "dicom", "fax", "gateway"; the address of
"fhir" and "gateway" endpoints is an http(s) URL. Strings are 1-1000 characters
(addresses 2048, ids 255) without control characters.

`validate_claims` returns the parsed `Claims` or raises `AuthorizationInvalid` whose
message names every element that is missing or wrong ("authorization is missing
statements.rightToRevoke"), never the values (they may be patient data).
"""
from __future__ import annotations

import base64
import binascii
import re
from datetime import date, datetime, timedelta, timezone
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from joserfc.jws import JWSRegistry
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
)

from gateway.errors import AuthorizationInvalid
from mappings import DATA_CLASSES

MAX_JWS_BYTES = 5 * 1024 * 1024
JWS_TYPE = "authorization+jwt"
ALGORITHMS = ("EdDSA", "ES256")
ENDPOINT_TYPES = ("pdf-folder", "fhir", "dicom", "fax", "gateway")
ALL = "all"



class _Registry(JWSRegistry):
    max_payload_length = MAX_JWS_BYTES  # joserfc's default (128 kB) is too small for a signed form


JWS_REGISTRY = _Registry(algorithms=list(ALGORITHMS))

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _no_control(value: str) -> str:
    if _CONTROL.search(value):
        raise ValueError("contains control characters")
    if not value.strip():
        raise ValueError("is blank")
    return value


def _day(value: str) -> date:
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", value):
        raise ValueError("must be a date YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError("is not a calendar date") from None


Text = Annotated[StrictStr, Field(min_length=1, max_length=1000), AfterValidator(_no_control)]
Id = Annotated[StrictStr, Field(min_length=1, max_length=255), AfterValidator(_no_control)]
Day = Annotated[StrictStr, AfterValidator(_day)]
Seconds = Annotated[StrictInt, Field(ge=0, le=253402300799)]  # NumericDate up to year 9999


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Identifier(Section):
    system: Id
    value: Id


class Name(Section):
    family: Text
    given: tuple[Text, ...] = ()


class Patient(Section):
    name: Name
    birthDate: Day
    identifiers: tuple[Identifier, ...] = Field(min_length=1)


class Signature(Section):
    signedBy: Literal["patient", "representative"]
    name: Text
    date: Day
    authority: Text | None = None


class DateRange(Section):
    start: Day | None = None
    end: Day | None = None


class Information(Section):
    dataClasses: tuple[str, ...] = Field(min_length=1)
    dateRange: DateRange | None = None
    description: Text | None = None

    @field_validator("dataClasses")
    @classmethod
    def _known(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = sorted(set(value) - DATA_CLASSES - {ALL})
        if unknown:
            raise ValueError(f"unknown data classes {unknown}; known: {sorted(DATA_CLASSES)} or 'all'")
        if len(set(value)) != len(value):
            raise ValueError("lists a data class twice")
        return value


class Endpoint(Section):
    type: Literal["pdf-folder", "fhir", "dicom", "fax", "gateway"]
    address: Annotated[StrictStr, Field(min_length=1, max_length=2048), AfterValidator(_no_control)]

    def key(self) -> tuple[str, str]:
        """The endpoint as compared by coverage checks (URLs without a trailing slash)."""
        return self.type, normalize_address(self.type, self.address)


def normalize_address(type_: str, address: str) -> str:
    address = address.strip()
    if type_ in ("fhir", "gateway"):
        parts = urlsplit(address)
        address = parts._replace(scheme=parts.scheme.lower(), netloc=parts.netloc.lower()).geturl()
        return address.rstrip("/")
    return address


class Discloser(Section):
    id: Id
    name: Text
    endpoints: tuple[Endpoint, ...] = Field(min_length=1)


class Recipient(Section):
    id: Id
    name: Text
    endpoint: Endpoint


class Expiration(Section):
    date: Day | None = None
    event: Text | None = None


class Statements(Section):
    rightToRevoke: Text
    treatmentConditioned: StrictBool
    conditioning: Text
    redisclosure: Text


class Attachment(Section):
    contentType: Literal["application/pdf"]
    data: str = Field(min_length=1)
    title: Text | None = None

    @field_validator("data")
    @classmethod
    def _pdf(cls, value: str) -> str:
        try:
            head = base64.b64decode(value[:64] + "=" * (-len(value[:64]) % 4), validate=True)
            base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("is not base64") from None
        if not head.startswith(b"%PDF-"):
            raise ValueError("is not a PDF (no %PDF- header)")
        return value

    def pdf(self) -> bytes:
        return base64.b64decode(self.data)


class Claims(BaseModel):
    """The payload, parsed. Unknown top-level claims are ignored."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    iss: Id
    jti: Annotated[StrictStr, Field(pattern=r"^[A-Za-z0-9._:-]{1,64}$")]
    iat: Seconds
    nbf: Seconds
    exp: Seconds
    patient: Patient
    signature: Signature
    information: Information
    disclosers: tuple[Discloser, ...] = Field(min_length=1)
    recipient: Recipient
    purpose: Text
    expiration: Expiration
    statements: Statements
    consent: dict[str, Any]
    attachment: Attachment | None = None


# Every element whose absence makes an authorization invalid (tests go through each).
REQUIRED_ELEMENTS = (
    "iss", "jti", "iat", "nbf", "exp",
    "patient", "patient.name", "patient.name.family", "patient.birthDate", "patient.identifiers",
    "signature", "signature.signedBy", "signature.name", "signature.date",
    "information", "information.dataClasses",
    "disclosers", "recipient", "recipient.id", "recipient.name", "recipient.endpoint",
    "purpose", "expiration",
    "statements", "statements.rightToRevoke", "statements.treatmentConditioned",
    "statements.conditioning", "statements.redisclosure",
    "consent",
)


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part not in ("function-after",) and not str(part).startswith(("literal[", "str", "nullable")):
            out += f".{part}" if out else str(part)
    return out or "payload"


def _messages(exc: ValidationError) -> list[str]:
    errors = exc.errors(include_input=False, include_url=False)
    inner = [e["loc"] for e in errors]
    seen: list[str] = []
    for err in errors:
        loc = err["loc"]
        if err["type"] == "too_short" and any(o[:len(loc)] == loc and len(o) > len(loc) for o in inner):
            continue  # a list left empty by its own invalid entries: those are reported
        where = _where(loc)
        if err["type"] == "missing":
            msg = f"authorization is missing {where}"
        elif err["type"] == "extra_forbidden":
            msg = f"authorization has an unknown element {where}"
        elif err["type"] == "too_short":
            msg = f"authorization has an invalid {where}: must list at least one entry"
        elif err["type"] == "string_too_short":
            msg = f"authorization has an invalid {where}: is empty"
        else:
            text = err["msg"].removeprefix("Value error, ")
            msg = f"authorization has an invalid {where}: {text}"
        if msg not in seen:
            seen.append(msg)
    return seen


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def _cross_checks(c: Claims) -> list[str]:
    problems = []
    if c.signature.signedBy == "representative" and not c.signature.authority:
        problems.append("authorization is missing signature.authority "
                        "(required when a representative signed)")
    if c.expiration.date is None and c.expiration.event is None:
        problems.append("authorization is missing expiration.date or expiration.event")
    if c.nbf >= c.exp:
        problems.append("authorization has an invalid nbf: not before exp")
    if c.iat > c.exp:
        problems.append("authorization has an invalid iat: after exp")
    if c.expiration.date is not None:
        end = datetime.combine(c.expiration.date + timedelta(days=1), datetime.min.time(), timezone.utc)
        if _utc(c.exp) > end:
            problems.append("authorization has an invalid exp: after expiration.date")
    if c.signature.date > _utc(c.iat).date() + timedelta(days=1):
        problems.append("authorization has an invalid signature.date: after iat")
    rng = c.information.dateRange
    if rng and rng.start and rng.end and rng.start > rng.end:
        problems.append("authorization has an invalid information.dateRange: start after end")
    ids = [d.id for d in c.disclosers]
    if len(set(ids)) != len(ids):
        problems.append("authorization has an invalid disclosers: an id appears twice")
    for where, ep in [(f"disclosers[{i}].endpoints[{j}]", e) for i, d in enumerate(c.disclosers)
                      for j, e in enumerate(d.endpoints)] + [("recipient.endpoint", c.recipient.endpoint)]:
        if ep.type in ("fhir", "gateway"):
            parts = urlsplit(ep.address)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                problems.append(f"authorization has an invalid {where}.address: "
                                f"a {ep.type} endpoint needs an http(s) URL")
    return problems


def validate_claims(payload: Any) -> Claims:
    """Parse and check the payload; AuthorizationInvalid lists every problem found."""
    if not isinstance(payload, dict):
        raise AuthorizationInvalid("authorization payload is not a JSON object", element="payload")
    try:
        claims = Claims.model_validate(payload)
    except ValidationError as exc:
        problems = _messages(exc)
        raise AuthorizationInvalid("; ".join(problems), problems=problems) from None
    problems = _cross_checks(claims)
    if problems:
        raise AuthorizationInvalid("; ".join(problems), problems=problems)
    return claims
