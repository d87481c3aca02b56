"""Authentication to a FHIR server: none, a static bearer token, or SMART Backend Services.

SMART Backend Services (https://hl7.org/fhir/smart-app-launch/backend-services.html):
the client proves itself with a short-lived JWT (`private_key_jwt`, signed RS384 or
ES384 with the key whose public half the gateway publishes at
`/.well-known/jwks.json`) and receives an access token through the OAuth 2.0
`client_credentials` grant. The token endpoint comes from the server's
`/.well-known/smart-configuration` unless configured (`token_url`); a discovered one must
be on the FHIR base's origin or on one the configuration lists (`token_origins`), over
https unless on loopback: a server cannot send our client assertion anywhere else. Tokens are reused until shortly
before they expire, and renewed once when the server answers 401.
"""
from __future__ import annotations

import threading
import time
import uuid
from typing import Callable
from urllib.parse import urlsplit

import orjson
from joserfc import jwt
from joserfc.jwk import ECKey, JWKRegistry, RSAKey

from connectors.base import SourceRejected, SourceUnavailable

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ALGORITHMS = {"RSA": "RS384", "EC": "ES384"}
ASSERTION_LIFETIME = 300  # SMART: at most five minutes
TOKEN_EARLY_RENEWAL = 60  # renew this many seconds before expiry


class NoAuth:
    def apply(self, headers: dict) -> None:
        pass

    def refresh(self) -> bool:
        return False


class BearerAuth:
    """A fixed token (test servers, or one handed over by an operator)."""

    def __init__(self, token: str):
        if not token:
            raise SourceRejected("bearer auth needs a token")
        self._token = token

    def apply(self, headers: dict) -> None:
        headers["Authorization"] = f"Bearer {self._token}"

    def refresh(self) -> bool:
        return False


def load_private_key(value) -> RSAKey | ECKey:
    """A private RSA or EC key from a PEM (str/bytes), a JWK dict or a joserfc key."""
    if isinstance(value, (RSAKey, ECKey)):
        key = value
    elif isinstance(value, dict):
        key = JWKRegistry.import_key(value)
    elif isinstance(value, (str, bytes)):
        text = value.encode() if isinstance(value, str) else value
        if text.lstrip().startswith(b"{"):
            key = JWKRegistry.import_key(orjson.loads(text))
        else:
            key = None
            for kty in ("RSA", "EC"):
                try:
                    key = JWKRegistry.import_key(text, kty)
                    break
                except Exception:  # noqa: BLE001 - joserfc raises several types for a wrong kty
                    continue
            if key is None:
                raise SourceRejected("client private key is neither an RSA nor an EC key")
    else:
        raise SourceRejected(f"unsupported private key value of type {type(value).__name__}")
    if not isinstance(key, (RSAKey, ECKey)) or not key.is_private:
        raise SourceRejected("SMART backend auth needs a private RSA or EC (P-384) key")
    if isinstance(key, ECKey) and key.curve_name != "P-384":
        raise SourceRejected(f"ES384 needs a P-384 key, got {key.curve_name}")
    return key


def key_algorithm(key, alg: str | None = None) -> str:
    alg = alg or ALGORITHMS[key.key_type]
    if alg not in ("RS384", "ES384") or ALGORITHMS[key.key_type] != alg:
        raise SourceRejected(f"algorithm {alg} does not fit a {key.key_type} key (use RS384 or ES384)")
    return alg


def public_jwks(private_key, kid: str | None = None, alg: str | None = None) -> dict:
    """The JWKS to publish for a client key: public members only, with kid, alg and use.

    The kid defaults to the key's RFC 7638 thumbprint, which is also what the connector
    puts in its assertion header when no kid is configured.
    """
    key = load_private_key(private_key)
    jwk = key.as_dict(private=False)
    for private_member in ("d", "p", "q", "dp", "dq", "qi"):
        jwk.pop(private_member, None)
    jwk.update(kid=kid or key.thumbprint(), alg=key_algorithm(key, alg), use="sig")
    return {"keys": [jwk]}


class SmartBackendAuth:
    """client_credentials + private_key_jwt, with discovery and token reuse."""

    def __init__(self, http, *, client_id: str, private_key, kid: str | None = None,
                 alg: str | None = None, scope: str = "system/*.read", token_url: str | None = None,
                 token_origins: tuple[str, ...] = (), resource: str | None = None,
                 clock: Callable[[], float] = time.time):
        if not client_id:
            raise SourceRejected("SMART backend auth needs a client_id")
        self.http = http  # FhirHttp; its base URL is where discovery starts
        self.client_id = client_id
        self.key = load_private_key(private_key)
        self.alg = key_algorithm(self.key, alg)
        self.kid = kid or self.key.thumbprint()
        self.scope = scope
        self.token_url = token_url
        self.token_origins = frozenset(_origin(o) for o in token_origins)
        self.resource = resource
        self.clock = clock
        self.granted_scope: str | None = None
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()
        self.tokens_issued = 0

    # -- discovery ----------------------------------------------------------------
    def discover(self) -> str:
        if self.token_url:
            return self.token_url
        conf = self.http.get(".well-known/smart-configuration", accept="application/json",
                             authenticated=False)
        try:
            doc = orjson.loads(conf.content)
        except orjson.JSONDecodeError:
            raise SourceRejected("/.well-known/smart-configuration is not JSON") from None
        token_url = doc.get("token_endpoint") if isinstance(doc, dict) else None
        if not token_url:
            raise SourceRejected("/.well-known/smart-configuration has no token_endpoint")
        methods = doc.get("token_endpoint_auth_methods_supported")
        if methods and "private_key_jwt" not in methods:
            raise SourceRejected("the server's token endpoint does not support private_key_jwt")
        algs = doc.get("token_endpoint_auth_signing_alg_values_supported")
        if algs and self.alg not in algs:
            raise SourceRejected(f"the token endpoint does not accept {self.alg} client assertions "
                                 f"(it lists {', '.join(algs)})")
        from .http import check_base_url  # the token URL must be https too (loopback aside)

        token_url = check_base_url(str(token_url))
        origin = _origin(token_url)
        if origin != _origin(self.http.base_url) and origin not in self.token_origins:
            raise SourceRejected(f"the server's token endpoint is on another origin ({origin}) "
                                 "than its FHIR base: list that origin in auth.token_origins, "
                                 "or set auth.token_url")
        self.token_url = token_url
        return self.token_url

    # -- tokens ---------------------------------------------------------------------
    def client_assertion(self, audience: str) -> str:
        now = int(self.clock())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": audience,
                  "iat": now, "exp": now + ASSERTION_LIFETIME, "jti": str(uuid.uuid4())}
        header = {"alg": self.alg, "kid": self.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self.key, algorithms=[self.alg])

    def token(self) -> str:
        with self._lock:
            if self._token and self.clock() < self._expires - TOKEN_EARLY_RENEWAL:
                return self._token
            token_url = self.discover()
            form = {"grant_type": "client_credentials", "scope": self.scope,
                    "client_assertion_type": ASSERTION_TYPE,
                    "client_assertion": self.client_assertion(token_url)}
            if self.resource:
                form["resource"] = self.resource
            try:
                answer = self.http.post_form(token_url, form)
            except SourceRejected as exc:  # its words stay out of the transfer's error
                status = getattr(exc, "status", None)
                raise SourceRejected("token endpoint refused the client"
                                     + (f" (HTTP {status})" if status else "")) from None
            try:
                doc = orjson.loads(answer.content)
            except orjson.JSONDecodeError:
                raise SourceUnavailable("token endpoint answered with something that is not JSON") from None
            token = doc.get("access_token") if isinstance(doc, dict) else None
            if not token or str(doc.get("token_type", "")).lower() != "bearer":
                raise SourceRejected("token endpoint answered without a bearer access_token")
            lifetime = doc.get("expires_in")
            lifetime = float(lifetime) if isinstance(lifetime, (int, float)) else 300.0
            self._token = token
            self._expires = self.clock() + lifetime
            self.granted_scope = doc.get("scope")
            self.tokens_issued += 1
            return token

    def apply(self, headers: dict) -> None:
        headers["Authorization"] = f"Bearer {self.token()}"

    def refresh(self) -> bool:
        """Forget the token (the server said 401); True means a retry may help."""
        with self._lock:
            self._token = None
            self._expires = 0.0
        return True


def make_auth(options: dict, http) -> NoAuth | BearerAuth | SmartBackendAuth:
    """Auth from the connector's `auth` options (see connectors/fhir/connector.py)."""
    auth = dict(options or {"type": "none"})
    kind = auth.get("type", "none")
    if kind == "none":
        return NoAuth()
    if kind == "bearer":
        return BearerAuth(auth.get("token") or _read(auth.get("token_file")))
    if kind in ("smart-backend", "smart"):
        key = auth.get("private_key") or _read(auth.get("private_key_file"))
        if not key:
            raise SourceRejected("SMART backend auth needs private_key or private_key_file")
        return SmartBackendAuth(http, client_id=auth.get("client_id", ""), private_key=key,
                                kid=auth.get("kid"), alg=auth.get("alg"),
                                scope=auth.get("scope", "system/*.read"),
                                token_url=auth.get("token_url"),
                                token_origins=tuple(auth.get("token_origins") or ()),
                                resource=auth.get("resource"))
    raise SourceRejected(f"unknown auth type {kind!r} (none, bearer, smart-backend)")


def _origin(url: str) -> str:
    """scheme://host:port of a URL, for comparing where requests go."""
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return f"{parts.scheme}://{(parts.hostname or '').lower()}:{port}"


def _read(path: str | None) -> str:
    if not path:
        return ""
    with open(path, encoding="utf-8") as fh:
        return fh.read().strip()
