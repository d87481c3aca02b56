"""Verifying a signed release authorization, and what it covers.

`verify_authorization` checks, in this order, and raises at the first failure with a
message naming it: size (at most 5 MiB), compact JWS form, protected header (alg EdDSA
or ES256 only, a kid, typ "authorization+jwt", no crit or b64; jku/jwk/x5u/x5c are
ignored: keys come from the trust store only), JSON payload, issuer and kid in
the trust store, signature, every required element (schema.py), validity period, and
the Consent (valid R4, and consistent with the HIPAA elements). Messages name elements,
issuers, key ids and organization ids, never patient data.

The coverage checks take either a `VerifiedAuthorization` or a stored
`models.Authorization` row, so transfer steps can call them with what they loaded.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from typing import Any

from joserfc import jws as jose_jws
from joserfc.errors import BadSignatureError, JoseError

from connectors.data_classes import covers
from gateway.errors import (
    AuthorizationDenied,
    AuthorizationExpired,
    AuthorizationInvalid,
    AuthorizationNotYetValid,
    AuthorizationRevoked,
    AuthorizationTooLarge,
)
from gateway.exchange.clock import CLOCK_SKEW, started
from gateway.storage import models
from gateway.trust.issuers import TrustStore
from mappings.consent import ConsentInvalid, consent_mismatches, validate_consent

from .schema import (
    ALGORITHMS,
    JWS_REGISTRY,
    JWS_TYPE,
    MAX_JWS_BYTES,
    Claims,
    Discloser,
    Endpoint,
    Patient,
    Recipient,
    normalize_address,
    validate_claims,
)

_COMPACT = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")


@dataclass(frozen=True, eq=False)
class VerifiedAuthorization:
    """What a verified authorization says, as the rest of the gateway needs it."""

    id: str
    issuer: str
    kid: str
    alg: str
    patient: Patient
    data_classes: frozenset[str]  # may contain "all"
    date_range: tuple[date | None, date | None] | None
    disclosers: tuple[Discloser, ...]
    recipient: Recipient
    purpose: str
    issued_at: datetime
    not_before: datetime
    expires_at: datetime
    consent: dict
    claims: dict = field(repr=False)  # the payload as signed
    jws_sha256: str = ""
    form_sha256: str | None = None  # hex SHA-256 of the attached signed form, if any
    terms: Claims = field(repr=False, default=None)


def _invalid(message: str, element: str) -> AuthorizationInvalid:
    return AuthorizationInvalid(message, element=element)


def jws_sha256(jws: str | bytes) -> str:
    data = jws.encode("utf-8") if isinstance(jws, str) else jws
    return hashlib.sha256(data).hexdigest()


def _utc(seconds: int) -> datetime:
    return datetime.fromtimestamp(seconds, tz=timezone.utc)


def _aware(value: datetime | None) -> datetime | None:
    """Datetimes from SQLite come back naive; they were stored as UTC."""
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value


def _now(now: datetime | None) -> datetime:
    return _aware(now) if now is not None else datetime.now(timezone.utc)


def _text(jws: Any) -> str:
    if isinstance(jws, bytes):
        if len(jws) > MAX_JWS_BYTES:
            raise AuthorizationTooLarge(
                f"authorization is {len(jws)} bytes; at most {MAX_JWS_BYTES} are accepted", size=len(jws))
        try:
            jws = jws.decode("ascii")
        except UnicodeDecodeError:
            raise _invalid("authorization is not a compact JWS (non-ASCII bytes)", "jws") from None
    if not isinstance(jws, str):
        raise _invalid("authorization must be a compact JWS string", "jws")
    if len(jws) > MAX_JWS_BYTES:
        raise AuthorizationTooLarge(
            f"authorization is {len(jws)} bytes; at most {MAX_JWS_BYTES} are accepted", size=len(jws))
    jws = jws.strip()
    if not _COMPACT.fullmatch(jws):
        raise _invalid("authorization is not a compact JWS (three base64url parts separated by dots)",
                       "jws")
    return jws


def verify_authorization(jws: str | bytes, trust: TrustStore,
                         now: datetime | None = None) -> VerifiedAuthorization:
    """Verify a signed authorization completely; raise an AuthorizationDenied subclass naming
    the first thing wrong (AuthorizationInvalid, -Expired, -NotYetValid, -TooLarge)."""
    text = _text(jws)
    try:
        segment = text.split(".", 1)[0]
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, binascii.Error):
        header = None
    if not isinstance(header, dict):
        raise _invalid("authorization JWS header is not base64url-encoded JSON", "header")
    alg = header.get("alg")
    if alg is None:
        raise _invalid("authorization JWS header has no alg", "alg")
    if alg not in ALGORITHMS:
        raise _invalid(f"authorization alg {str(alg)[:20]!r} is not allowed (only EdDSA, ES256)", "alg")
    if "crit" in header or "b64" in header:
        raise _invalid("authorization JWS header has crit or b64 parameters, which are not supported",
                       "crit")
    if header.get("typ", JWS_TYPE) != JWS_TYPE:
        raise _invalid(f"authorization JWS typ must be {JWS_TYPE!r}", "typ")
    kid = header.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise _invalid("authorization JWS kid is not a string", "kid")
    try:
        compact = jose_jws.extract_compact(text.encode("ascii"), registry=JWS_REGISTRY)
    except JoseError as exc:
        raise _invalid(f"authorization is not a valid compact JWS ({exc.error})", "jws") from None
    try:
        payload = json.loads(compact.payload.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _invalid("authorization payload is not UTF-8 JSON", "payload") from None
    if not isinstance(payload, dict):
        raise _invalid("authorization payload is not a JSON object", "payload")
    iss = payload.get("iss")
    if not isinstance(iss, str) or not iss:
        raise _invalid("authorization is missing iss", "iss")
    trusted = trust.key_for(iss, kid)
    if trusted.alg != alg:
        raise _invalid(f"key {kid!r} of issuer {iss!r} is a {trusted.alg} key; it cannot verify alg {alg}",
                       "alg")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # joserfc flags "EdDSA" as superseded by "Ed25519"
            jose_jws.deserialize_compact(text, trusted.key, algorithms=[alg], registry=JWS_REGISTRY)
    except BadSignatureError:
        raise _invalid(f"authorization signature does not verify with key {kid!r} of issuer {iss!r}",
                       "signature") from None
    except JoseError as exc:
        raise _invalid(f"authorization signature cannot be checked: {exc.error}", "signature") from None

    claims = validate_claims(payload)
    current = _now(now)
    not_before, expires_at = _utc(claims.nbf), _utc(claims.exp)
    if not started(not_before, current):
        raise AuthorizationNotYetValid(
            f"authorization {claims.jti} is not valid before {not_before.isoformat()}"
            f" (clock tolerance {CLOCK_SKEW.total_seconds():.0f} s)",
            authorization_id=claims.jti)
    if current >= expires_at:
        raise AuthorizationExpired(f"authorization {claims.jti} expired at {expires_at.isoformat()}",
                                   authorization_id=claims.jti)
    rng = claims.information.dateRange
    date_range = (rng.start, rng.end) if rng and (rng.start or rng.end) else None
    try:
        model = validate_consent(claims.consent)
    except ConsentInvalid as exc:
        raise _invalid(f"authorization has an invalid {exc}", "consent") from None
    problems = consent_mismatches(
        model, patient_identifiers=[i.model_dump() for i in claims.patient.identifiers],
        not_before=not_before, expires_at=expires_at,
        disclosers=[d.id for d in claims.disclosers], recipient=claims.recipient.id,
        date_range={"start": date_range[0], "end": date_range[1]} if date_range else None,
        data_classes=claims.information.dataClasses, signed_on=claims.signature.date)
    if problems:
        raise AuthorizationInvalid("authorization's Consent disagrees with it: " + "; ".join(problems),
                                   element="consent", problems=problems)
    return VerifiedAuthorization(
        id=claims.jti, issuer=claims.iss, kid=trusted.kid, alg=alg, patient=claims.patient,
        data_classes=frozenset(claims.information.dataClasses), date_range=date_range,
        disclosers=claims.disclosers, recipient=claims.recipient, purpose=claims.purpose,
        issued_at=_utc(claims.iat), not_before=not_before, expires_at=expires_at,
        consent=claims.consent, claims=payload, jws_sha256=jws_sha256(text),
        form_sha256=(hashlib.sha256(claims.attachment.pdf()).hexdigest()
                     if claims.attachment else None),
        terms=claims)


# --- coverage: called at every transfer step -------------------------------------------

_TERMS_CACHE: OrderedDict[str, Claims] = OrderedDict()


def _terms(auth: VerifiedAuthorization | models.Authorization) -> tuple[str, Claims]:
    if isinstance(auth, VerifiedAuthorization):
        return auth.id, auth.terms
    cached = _TERMS_CACHE.get(auth.jws_sha256)
    if cached is None:
        cached = validate_claims(auth.claims)  # was verified on import; parsed once per process
        _TERMS_CACHE[auth.jws_sha256] = cached
        if len(_TERMS_CACHE) > 256:
            _TERMS_CACHE.popitem(last=False)
    return auth.id, cached


def _endpoint_key(endpoint: Any) -> tuple[str, str]:
    if isinstance(endpoint, Endpoint):
        return endpoint.key()
    if isinstance(endpoint, dict):
        type_, address = endpoint.get("type"), endpoint.get("address")
    elif isinstance(endpoint, (tuple, list)) and len(endpoint) == 2:
        type_, address = endpoint
    else:
        raise TypeError("endpoint must be an Endpoint, a {'type','address'} dict or a (type, address) pair")
    if not isinstance(type_, str) or not isinstance(address, str):
        raise TypeError("endpoint type and address must be strings")
    return type_, normalize_address(type_, address)


def covers_source(auth, organization_id: str, endpoint: Any = None) -> Discloser:
    """The discloser `organization_id` if the authorization names it (and, when given, this
    endpoint of it); AuthorizationDenied naming the source otherwise."""
    auth_id, terms = _terms(auth)
    for discloser in terms.disclosers:
        if discloser.id == organization_id:
            break
    else:
        raise AuthorizationDenied(
            f"source {organization_id!r} is not a discloser named in authorization {auth_id}",
            authorization_id=auth_id, source=organization_id)
    if endpoint is not None:
        key = _endpoint_key(endpoint)
        if key not in {e.key() for e in discloser.endpoints}:
            raise AuthorizationDenied(
                f"endpoint {key[0]} {key[1]!r} of source {organization_id!r} is not named in "
                f"authorization {auth_id}", authorization_id=auth_id, source=organization_id)
    return discloser


def covers_recipient(auth, recipient_id: str, endpoint: Any = None) -> Recipient:
    """The recipient if it is the one the authorization names (and, when given, at this
    endpoint); AuthorizationDenied naming the recipient otherwise."""
    auth_id, terms = _terms(auth)
    if terms.recipient.id != recipient_id:
        raise AuthorizationDenied(
            f"recipient {recipient_id!r} is not the recipient named in authorization {auth_id}",
            authorization_id=auth_id, recipient=recipient_id)
    if endpoint is not None:
        key = _endpoint_key(endpoint)
        if key != terms.recipient.endpoint.key():
            raise AuthorizationDenied(
                f"endpoint {key[0]} {key[1]!r} is not the endpoint of recipient {recipient_id!r} "
                f"in authorization {auth_id}", authorization_id=auth_id, recipient=recipient_id)
    return terms.recipient


def _as_date(value: Any) -> date | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if isinstance(value, str):
        try:
            return date.fromisoformat(value[:10])
        except ValueError:
            return None
    return None


def allows(auth, data_class: str, clinical_date: Any) -> bool:
    """Whether a record of `data_class` dated `clinical_date` (date, datetime or ISO string)
    may be released (connectors/data_classes.py `covers`: the rule the receiver checks too)."""
    _, terms = _terms(auth)
    rng = terms.information.dateRange
    return covers(terms.information.dataClasses, rng.start if rng else None, rng.end if rng else None,
                  data_class, _as_date(clinical_date))


def check_active(row: models.Authorization, now: datetime | None = None) -> None:
    """Raise if a stored authorization may not be used right now (revoked, expired, not yet
    valid). Cheap: reads only the row; call it at every step."""
    if row.status == "revoked":
        raise AuthorizationRevoked(
            f"authorization {row.id} was revoked" + (f": {row.revoked_reason}" if row.revoked_reason else ""),
            authorization_id=row.id)
    if row.status != "active":
        raise AuthorizationDenied(f"authorization {row.id} has status {row.status!r}",
                                  authorization_id=row.id)
    current = _now(now)
    not_before, expires_at = _aware(row.not_before), _aware(row.expires_at)
    if not_before is not None and not started(not_before, current):
        raise AuthorizationNotYetValid(f"authorization {row.id} is not valid before {not_before.isoformat()}"
                                       f" (clock tolerance {CLOCK_SKEW.total_seconds():.0f} s)",
                                       authorization_id=row.id)
    if expires_at is None or current >= expires_at:
        raise AuthorizationExpired(
            f"authorization {row.id} expired at {expires_at.isoformat() if expires_at else '(unknown)'}",
            authorization_id=row.id)
