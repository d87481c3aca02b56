"""Typed configuration, validated at start-up.

Sources, lowest first: defaults, an optional file (`GATEWAY_CONFIG_FILE`, TOML or JSON),
environment variables (`GATEWAY_` prefix, `__` for nesting, e.g.
`GATEWAY_PEERS__CENTER__BASE_URL`), then values passed in code (tests). A wrong setting
raises `ConfigError` naming it. Secrets come from files or the environment and are
never logged. The comment beside or above each field (or its `description`) is its entry
in docs/settings.md (`records-gateway settings-reference`): every field needs one.
"""
from __future__ import annotations

import ipaddress
import json
import os
import random
import ssl
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import ConfigError


def loopback(url: str) -> bool:
    """Whether a URL's host is this machine (127.0.0.0/8, ::1, localhost)."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _tls_required(model: BaseModel, *fields: str) -> None:
    """Everything between hosts goes over TLS: plain HTTP only to loopback, or where the
    configuration says so explicitly (`allow_http = true`)."""
    for name in fields:
        url = getattr(model, name)
        if url and url.startswith("http://") and not model.allow_http and not loopback(url):
            raise ValueError(f"{name} {url} is plain HTTP to another host: use https, "
                             "or set allow_http = true for this peer")


class SubscriptionsConfig(BaseModel):
    """FHIR Subscriptions (R4 Backport IG) at a fhir-rest source: the topics (canonical
    URLs) to subscribe to for each patient, the payload the server sends, and how often
    it must send a heartbeat. Notifications come to {base_url}/subscriptions/{id}/notify."""

    topics: list[str] = Field(min_length=1)  # SubscriptionTopic canonical URLs to subscribe to
    payload: Literal["id-only", "full-resource"] = "id-only"  # what a notification carries
    # no word for twice this: an incremental pull catches up
    heartbeat_s: int = Field(60, ge=1, le=86400)


DAY = 24 * 3600.0
# how long each kind of source usually takes to answer a records request
EXPECT_WITHIN_S = {"fhir-rest": 3600.0, "dicom": DAY, "dicomweb": DAY, "pdf-folder": 3 * DAY,
                   "fax-drop": 10 * DAY}


class SourceConfig(BaseModel):
    """A place records come from: a connector kind and the organization behind it."""

    kind: str  # connector kind, see connectors/__init__.py
    organization: str  # the discloser's id as named in authorizations
    endpoint: str  # must equal one of that discloser's endpoints in the authorization
    data_class: str = "documents"  # for records whose class the source cannot tell
    # the connector's own options (connectors/<kind>: host, base_url, path, auth, ...)
    options: dict[str, Any] = Field(default_factory=dict)
    subscriptions: SubscriptionsConfig | None = None  # fhir-rest only
    # unattended cases: when an authorization naming this source's organization and
    # endpoint is imported, "start" pulls at once, "review" waits for an operator's
    # approval, "off" leaves the source to transfers an operator starts
    auto: Literal["start", "review", "off"] = "review"
    # the source should have answered this long after its first pull started (default
    # by kind, EXPECT_WITHIN_S); reminders go at remind_every_s until then, then overdue
    expect_within_s: float | None = Field(default=None, gt=0)
    # reminders until overdue (default: a third of expect_within_s)
    remind_every_s: float | None = Field(default=None, gt=0)
    # scheduled incremental pulls while the case is open (None: none)
    poll_interval_s: float | None = Field(default=None, gt=0)

    def expect_within(self) -> float:
        return self.expect_within_s or EXPECT_WITHIN_S.get(self.kind, 3 * DAY)

    def remind_every(self) -> float:
        return self.remind_every_s or self.expect_within() / 3

    @model_validator(mode="after")
    def _subscriptions_fhir(self) -> "SourceConfig":
        if self.subscriptions is not None and self.kind != "fhir-rest":
            raise ValueError("subscriptions are for fhir-rest sources only")
        return self


class DicomDestination(BaseModel):
    """Where a recipient takes DICOM instances: a PACS by C-STORE (`kind = "c-store"`:
    host, port, ae_title, calling_aet) or a DICOMweb base by STOW-RS (`kind = "stow-rs"`:
    url; the peer's bearer token is sent when `send_token`)."""

    kind: Literal["c-store", "stow-rs"]  # a PACS by C-STORE, or DICOMweb by STOW-RS
    host: str | None = None  # c-store: the PACS's host
    port: int | None = Field(default=None, ge=1, le=65535)  # c-store: its DICOM port
    ae_title: str | None = Field(default=None, max_length=16)  # c-store: its AE title
    calling_aet: str = Field(default="GATEWAY", max_length=16)  # c-store: ours
    url: str | None = None  # stow-rs: the DICOMweb base URL
    send_token: bool = False  # stow-rs: send the peer's bearer token
    batch_bytes: int = 32 << 20  # STOW-RS: at most this much per request
    allow_http: bool = False  # plain HTTP to a host other than loopback

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _complete(self) -> "DicomDestination":
        if self.kind == "c-store" and not (self.host and self.port and self.ae_title):
            raise ValueError("a c-store destination needs host, port and ae_title")
        if self.kind == "stow-rs" and not self.url:
            raise ValueError("a stow-rs destination needs url")
        _tls_required(self, "url")
        return self


class TlsClient(BaseModel):
    """How we check another gateway's certificate (a CA bundle; default: the system's)
    and, for mutual TLS, the client certificate we present to it."""

    ca_file: Path | None = None  # CA bundle for its certificate (default: the system's CAs)
    client_cert_file: Path | None = None  # mutual TLS: the client certificate we present
    client_key_file: Path | None = None  # mutual TLS: its private key

    @model_validator(mode="after")
    def _pair(self) -> "TlsClient":
        if (self.client_cert_file is None) != (self.client_key_file is None):
            raise ValueError("client_cert_file and client_key_file go together")
        return self

    def tls(self) -> dict:
        """The `requests` arguments for calls to this party."""
        out: dict = {"verify": str(self.ca_file) if self.ca_file else True}
        if self.client_cert_file is not None:
            out["cert"] = (str(self.client_cert_file), str(self.client_key_file))
        return out


class PeerConfig(TlsClient):
    """A recipient we deliver to: another gateway in receive mode (signed receipts), or a
    plain FHIR server (`kind = "fhir"`, base_url its FHIR base: unsigned acknowledgments).

    DICOM instances go to `dicom`; a peer gateway takes them by default itself, by
    STOW-RS at {base_url}/dicomweb with our token. A plain FHIR server has no default."""

    base_url: str  # the peer gateway's base URL (or a FHIR server's base)
    # gateway: signed receipts; fhir: a plain FHIR server
    kind: Literal["gateway", "fhir"] = "gateway"
    organization: str  # the recipient's id as named in authorizations
    token: SecretStr | None = None  # bearer token the peer issued to us
    token_file: Path | None = None  # a file holding that token (preferred to token)
    jwks_file: Path | None = None  # the peer's public keys, to verify its receipts
    jwks_url: str | None = None  # default: {base_url}/.well-known/jwks.json
    dicom: DicomDestination | None = None  # where its DICOM instances go (default: its own STOW-RS)
    allow_http: bool = False  # plain HTTP to a host other than loopback

    @field_validator("base_url", "jwks_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _tls(self) -> "PeerConfig":
        _tls_required(self, "base_url", "jwks_url")
        return self

    def dicom_destination(self) -> DicomDestination | None:
        if self.dicom is not None or self.kind != "gateway":
            return self.dicom
        return DicomDestination(kind="stow-rs", url=f"{self.base_url}/dicomweb", send_token=True)

    def bearer(self) -> str:
        if self.token is not None:
            return self.token.get_secret_value()
        if self.token_file is not None:
            return self.token_file.read_text().strip()
        raise ConfigError("peer has neither token nor token_file")


class SenderConfig(TlsClient):
    """Receive side: a gateway we accept bundles from, named as its peer token is named.

    Its bundles must carry a detached JWS that verifies against these keys; its
    "opened" receipts and our replies go back to `base_url` with `token`."""

    organization: str  # the sender's id, as the authorizations name the discloser
    jwks_file: Path | None = None  # the sender's public keys, to verify its bundles' signatures
    jwks_url: str | None = None  # default: {base_url}/.well-known/jwks.json
    # the sender gateway's base URL: opened receipts and replies go there
    base_url: str | None = None
    token: SecretStr | None = None  # a peer token the sender issued to us
    token_file: Path | None = None  # a file holding that token (preferred to token)
    allow_http: bool = False  # plain HTTP to a host other than loopback

    @field_validator("base_url", "jwks_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _tls(self) -> "SenderConfig":
        _tls_required(self, "base_url", "jwks_url")
        return self

    def bearer(self) -> str | None:
        if self.token is not None:
            return self.token.get_secret_value()
        if self.token_file is not None:
            return self.token_file.read_text().strip()
        return None


class CenterProviderConfig(TlsClient):
    """A provider in the second-opinion center's directory: a hospital running this
    gateway (`kind = "gateway"`: the signed authorization goes to its
    `POST /authorizations`), or a records office reachable only by fax (`kind = "fax"`:
    a request letter, the signed form and a cover sheet go to the center's fax outbox)."""

    name: str = Field(min_length=1, max_length=200)  # shown to the patient on the form
    kind: Literal["gateway", "fax"]  # a peer gateway, or a records office by fax
    organization: str  # its id, named as the discloser in the authorization
    # its endpoints as the authorization names them ({"type", "address"}): what its own
    # gateway's sources are configured with, or {"type": "fax", "address": number}
    endpoints: list[dict[str, str]] = Field(min_length=1)
    base_url: str | None = None  # gateway: its base URL
    token_file: Path | None = None  # gateway: a file holding the peer token it issued to us
    fax_number: str | None = None  # fax: the number the request goes to (printed in the letter)
    allow_http: bool = False  # plain HTTP to a host other than loopback
    # it should have answered this long after the request went (default: 3 days for a
    # gateway, as a PDF folder source, 10 days by fax)
    expect_within_s: float | None = Field(default=None, gt=0)
    remind_every_s: float | None = Field(default=None, gt=0)  # default: a third of expect_within_s

    @field_validator("base_url")
    @classmethod
    def _http_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return v.rstrip("/") if v else v

    @model_validator(mode="after")
    def _kind(self) -> "CenterProviderConfig":
        if self.kind == "gateway" and (self.base_url is None or self.token_file is None):
            raise ValueError("a gateway provider needs base_url and token_file")
        if self.kind == "fax" and not self.fax_number:
            raise ValueError("a fax provider needs fax_number")
        for endpoint in self.endpoints:
            if set(endpoint) != {"type", "address"}:
                raise ValueError("each endpoint is {\"type\": ..., \"address\": ...}")
        _tls_required(self, "base_url")
        return self

    def expect_within(self) -> float:
        return self.expect_within_s or EXPECT_WITHIN_S["fax-drop" if self.kind == "fax" else "pdf-folder"]

    def remind_every(self) -> float:
        return self.remind_every_s or self.expect_within() / 3


class CenterConfig(BaseModel):
    """The second-opinion center's intake: it takes a patient's request once, signs the
    authorization with its intake issuer key, asks every provider named and tracks the
    answers; the patient follows them on a status page (docs/requests.md)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=200)  # the center's name, as the recipient
    # the issuer id of the authorizations the intake signs; hospitals trust it with the
    # key `records-gateway requests issuer-jwks` prints
    issuer: str = Field(min_length=1, max_length=255)
    providers: dict[str, CenterProviderConfig] = Field(default_factory=dict)  # the directory
    fax_outbox: Path | None = None  # where fax requests are written for the fax server
    return_fax: str = ""  # the center's fax number, printed on cover sheets
    # fax-drop connector options (drop, store, ...) of the folder faxed replies arrive in;
    # their cover sheets bring them back to the request
    fax_replies: dict[str, Any] | None = None
    valid_days: int = Field(180, ge=1, le=3650)  # the longest expiration the form accepts
    status_link_ttl_s: float = Field(90 * DAY, gt=0)  # a patient's status link works this long
    form_ttl_s: float = Field(2 * 3600.0, gt=0)  # a blank form must be submitted within this
    invite_ttl_s: float = Field(7 * DAY, gt=0)  # a patient's emailed invitation to the form works this long


class FolderStoreConfig(BaseModel):
    """Blobs in a folder: data_dir/blobs, or `path` (a volume several hosts mount)."""

    model_config = {"extra": "forbid"}
    kind: Literal["folder"] = "folder"  # blobs as files in a folder
    path: Path | None = None  # default: data_dir/blobs; a shared volume for several hosts


class S3StoreConfig(BaseModel):
    """Blobs in an S3-compatible object store; keys from files, never inline."""

    model_config = {"extra": "forbid"}
    kind: Literal["s3"]  # blobs as objects in an S3-compatible store
    bucket: str = Field(min_length=3, max_length=63)  # the bucket (it must exist)
    prefix: str = ""  # e.g. "gateway-a/": several gateways may share a bucket
    endpoint_url: str | None = None  # None: AWS S3
    region: str | None = None  # the store's region, where it asks for one
    access_key_file: Path | None = None  # None: boto3's own chain (instance role, env)
    secret_key_file: Path | None = None  # the secret key, in a file (with access_key_file)
    ca_file: Path | None = None  # a private CA for the endpoint's certificate
    part_size: int = Field(8 * 1024 * 1024, ge=5 * 1024 * 1024)  # multipart upload part
    allow_http: bool = False  # plain HTTP to an endpoint other than loopback

    @model_validator(mode="after")
    def _checked(self) -> "S3StoreConfig":
        _tls_required(self, "endpoint_url")
        if (self.access_key_file is None) != (self.secret_key_file is None):
            raise ValueError("access_key_file and secret_key_file go together")
        return self


class RetryConfig(BaseModel):
    base_delay_s: float = 2.0  # the first retry's delay; doubled each attempt, with jitter
    max_delay_s: float = 600.0  # the longest delay between two attempts
    max_attempts: int = 200  # at the max delay this is over a day of retries
    max_retry_after_s: float = 3600.0  # a recipient's Retry-After is honoured up to this

    def delay(self, attempts: int, retry_after: float | None = None) -> float:
        """Seconds before the next attempt: exponential with jitter (spreads the retries
        of many senders), never sooner than a capped `Retry-After` asks."""
        delay = min(self.max_delay_s, self.base_delay_s * (2 ** min(attempts, 30)))
        delay *= random.uniform(0.5, 1.0)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.max_retry_after_s))
        return delay


# What notifications tell people about (gateway/notify/events.py builds their payloads)
NotifyEvent = Literal["case.started", "source.overdue", "case.complete", "transfer.delivered",
                      "transfer.opened", "transfer.failed", "authorization.expiring"]
NOTIFY_EVENTS: tuple[str, ...] = get_args(NotifyEvent)


class WebhookConfig(BaseModel):
    """A webhook subscriber: events POSTed as JSON, signed with HMAC-SHA256 under the
    secret in `secret_file` (docs/notifications.md says how a receiver checks it)."""

    model_config = ConfigDict(extra="forbid")

    # names the subscriber in logs and the dead-letter list
    name: str = Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")
    url: str  # where events are POSTed
    secret_file: Path  # HMAC-SHA256 key shared with the receiver
    # which events it gets (default: all)
    events: list[NotifyEvent] = Field(default_factory=lambda: list(NOTIFY_EVENTS))
    allow_http: bool = False  # plain HTTP to a host other than loopback

    @field_validator("url")
    @classmethod
    def _http_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError("must be an http(s) URL")
        return v

    @model_validator(mode="after")
    def _tls(self) -> "WebhookConfig":
        _tls_required(self, "url")
        return self


_MAILBOX = r'^[^@\s<>,;"]+@[^@\s<>,;"]+$'  # one bare address: nothing a header could split


class EmailConfig(BaseModel):
    """Notifications by email over SMTP with STARTTLS (the server's certificate checked
    against `ca_file`, default: the system's CAs) and AUTH with `username` and the
    password in `password_file`. Credentials never go over plain SMTP, except to a
    loopback host with `allow_plain_auth = true` (a local relay)."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    host: str  # the SMTP server
    port: int = Field(587, ge=1, le=65535)  # 587: submission with STARTTLS
    starttls: bool = True  # upgrade to TLS before AUTH and the message
    username: str | None = None  # AUTH user (with password_file)
    password_file: Path | None = None  # a file holding the AUTH password
    from_: str = Field(alias="from", pattern=_MAILBOX)  # the sender address (`from` in the file)
    to: list[Annotated[str, Field(pattern=_MAILBOX)]] = Field(min_length=1)  # recipient addresses
    ca_file: Path | None = None  # CA bundle for the server's certificate (default: the system's)
    # which events are mailed (default: all)
    events: list[NotifyEvent] = Field(default_factory=lambda: list(NOTIFY_EVENTS))
    allow_plain_auth: bool = False  # AUTH without TLS: loopback hosts only

    @model_validator(mode="after")
    def _credentials_over_tls(self) -> "EmailConfig":
        if (self.username is None) != (self.password_file is None):
            raise ValueError("username and password_file go together")
        refusal = self.plain_auth_refusal()
        if refusal:
            raise ValueError(refusal)
        return self

    def plain_auth_refusal(self) -> str | None:
        """Why credentials may not be sent as configured, or None: AUTH goes only inside
        STARTTLS, or in the clear to a loopback relay explicitly allowed."""
        if self.username is None or self.starttls:
            return None
        if not loopback(f"smtp://{self.host}"):
            return (f"SMTP credentials for {self.host} would go without TLS: "
                    "set starttls = true")
        if not self.allow_plain_auth:
            return "SMTP credentials without TLS (even to loopback) need allow_plain_auth = true"
        return None


class NotifyConfig(BaseModel):
    """Who is told about what (`[notify]`): webhooks, email, and how soon before an
    authorization expires it is announced. Notifications hold ids, states and links only."""

    model_config = ConfigDict(extra="forbid")

    webhooks: list[WebhookConfig] = Field(default_factory=list)  # signed webhook subscribers
    email: EmailConfig | None = None  # email over SMTP (none: no email)
    # announce an authorization this long before it expires
    expiring_within_days: int = Field(14, ge=1)
    interval_s: float = Field(10.0, gt=0)  # how often due notifications are sent
    timeout_s: float = Field(15.0, gt=0)  # one webhook call or SMTP session
    # retries of one notification, then dead-letter
    retry: RetryConfig = Field(default_factory=lambda: RetryConfig(
        base_delay_s=30.0, max_delay_s=3600.0, max_attempts=12))

    @field_validator("webhooks")
    @classmethod
    def _unique_names(cls, v: list[WebhookConfig]) -> list[WebhookConfig]:
        names = [w.name for w in v]
        if len(set(names)) != len(names):
            raise ValueError("webhook names must be unique")
        return v


class SignInLimits(BaseModel):
    """How fast sign-in may be tried (`[web.sign_in]`): failed sign-ins are counted per
    account name presented and per client address, in the database, so every process and
    host of a deployment counts together. Past a limit, sign-in is refused (HTTP 429, even
    with the right password) for a lockout that doubles with each lockout in a row."""

    model_config = ConfigDict(extra="forbid")

    window_s: float = Field(900.0, gt=0)  # failures are counted over this long
    # an account name (whether or not it exists) is locked after this many failures
    max_failures_per_name: int = Field(5, ge=1)
    # one client address is locked after this many failures, whatever names it tried
    # (higher: people behind one office NAT share an address)
    max_failures_per_address: int = Field(20, ge=1)
    lockout_s: float = Field(300.0, gt=0)  # the first lockout; each next one is twice as long
    max_lockout_s: float = Field(3600.0, gt=0)  # the longest lockout
    # a name or address with no failure for this long starts again from the first lockout
    forget_after_s: float = Field(86400.0, gt=0)
    # reverse proxies in front of the app that append the client's address to
    # X-Forwarded-For (deploy/nginx: 1); 0: the connection's own address is the client's
    trusted_proxies: int = Field(0, ge=0, le=5)

    @model_validator(mode="after")
    def _longest_not_shorter(self) -> "SignInLimits":
        if self.max_lockout_s < self.lockout_s:
            raise ValueError("max_lockout_s must be at least lockout_s")
        return self


class WebConfig(BaseModel):
    """The web pages' signed-in sessions and sign-in limits."""

    # a session unused this long ends (a page polling for progress does not count as use)
    idle_timeout_s: float = Field(900.0, gt=0)
    # a session ends this long after sign-in, however busy
    max_age_s: float = Field(12 * 3600.0, gt=0)
    # the session cookie's Secure flag: "auto" sets it when the request came over TLS or
    # base_url is https (behind a TLS-terminating proxy); "always" or "never" force it
    secure_cookie: Literal["auto", "always", "never"] = "auto"
    # failed sign-ins: how many, how fast, and how long a lockout lasts
    sign_in: SignInLimits = Field(default_factory=SignInLimits)


class DicomReceiverConfig(BaseModel):
    """The standing DICOM receiver (`records-gateway dicom-receiver`): one C-MOVE
    destination on a stable address for every worker, so a DICOM pull runs on any worker
    with no inbound port of its own (docs/dicom.md). The PACS must know its AE title,
    host and port as a move destination."""

    model_config = ConfigDict(extra="forbid")

    ae_title: str = Field("GATEWAY-RECV", min_length=1, max_length=16,
                          pattern=r"^[ -~]*[!-~][ -~]*$")  # its AE title: the move destination
    host: str = "127.0.0.1"  # the interface it listens on (0.0.0.0 in a container)
    port: int = Field(11112, ge=1, le=65535)  # its DICOM port
    # where `doctor`, and a worker whose C-MOVE brought nothing, check it answers (an
    # association, and /health where health_port is set); default host (127.0.0.1 for 0.0.0.0)
    address: str | None = None
    # GET /health on this port answers 200 while it listens and reaches the database
    # and blob store (unset: no health endpoint; `doctor` still checks its association)
    health_port: int | None = Field(None, ge=1, le=65535)
    health_host: str = "127.0.0.1"  # the interface the health endpoint listens on
    # every DICOM (DIMSE) source retrieves by C-MOVE to this receiver; otherwise only the
    # sources whose options say retrieve = "receiver"
    all_sources: bool = False
    # an open C-MOVE's expectation expires after this long (a worker killed mid-move)
    move_ttl_s: float = Field(6 * 3600.0, gt=0)
    # after a C-MOVE's final response, how long the worker waits for the receiver to
    # record instances the PACS counted as sent
    settle_s: float = Field(120.0, gt=0)

    def reach(self) -> str:
        """The host `doctor` and the workers check it on."""
        return self.address or ("127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GATEWAY_", env_nested_delimiter="__",
                                      extra="forbid")

    # state: keys, trust store, blobs, SQLite and embedded broker
    data_dir: Path = Path("gateway-data")
    database_url: str | None = None  # default: SQLite file in data_dir
    redis_url: str | None = None  # Celery broker; None = embedded broker in data_dir
    queue: str = "records-gateway"  # Celery queue: gateways sharing a Redis each need their own
    # Redis broker: a message not acked within this many seconds is delivered again (a step
    # that outlives it runs twice at once; leases and idempotency keys make that harmless)
    broker_visibility_timeout_s: float = Field(3600.0, gt=0)
    organization: str = "gateway.local"  # our identity in authorizations and receipts
    # our public URL: in receipts and checkpoints, and where sources send FHIR Subscription
    # notifications (it must reach this gateway from the source)
    base_url: str = "http://127.0.0.1:8080"
    host: str = "127.0.0.1"  # `serve`: the interface to listen on
    port: int = 8080  # `serve`: the port to listen on
    mode: Literal["send", "receive", "both"] = "both"  # send, receive (a center), or both
    blob_key: SecretStr | None = None  # base64 AES-256 key; else blob_key_file
    blob_key_file: Path | None = None  # default: data_dir/keys/blob.key
    # where blobs live (encrypted the same way in both): a folder (default data_dir/blobs,
    # or a shared volume's path) or an S3-compatible object store
    blob_store: FolderStoreConfig | S3StoreConfig = Field(default_factory=FolderStoreConfig,
                                                          discriminator="kind")
    trust_file: Path | None = None  # issuers' JWKS; default: data_dir/trust/issuers.json
    # where records come from, by name
    sources: dict[str, SourceConfig] = Field(default_factory=dict)
    peers: dict[str, PeerConfig] = Field(default_factory=dict)  # recipients we deliver to, by name
    senders: dict[str, SenderConfig] = Field(default_factory=dict)  # receive side, by token name
    bundle_max_bytes: int = 256 * 1024 * 1024  # larger transfers go as several bundles
    # a document larger than this is uploaded as Binary/{id} before its bundle, which
    # then only references it (the receiver never holds a huge bundle)
    attachment_inline_max_bytes: int = Field(4 * 1024 * 1024, ge=0)
    receive_claim_s: float = 120.0  # a receive interrupted longer than this is taken over
    # retries of transfer steps (backoff, Retry-After)
    retry: RetryConfig = Field(default_factory=RetryConfig)
    # notifications to people: webhooks, email
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    # the web pages: session idle timeout and lifetime, the cookie's Secure flag
    web: WebConfig = Field(default_factory=WebConfig)
    # the standing DICOM receiver, the C-MOVE destination every worker shares (unset: none)
    dicom_receiver: DicomReceiverConfig | None = None
    step_lease_s: float = 300.0  # a step not finished by then is taken over
    # `serve` and `worker` load the FHIR models (about 1 CPU-second) before taking work, so
    # the first transfer after a start does not wait for them; off: loaded on first use
    warm_up_fhir_models: bool = True
    reconcile_interval_s: float = 30.0  # how often lost step messages are re-enqueued
    # how often the audit log's tree head is signed (when the log grew): the newest events
    # are covered by no signature for at most this long
    checkpoint_interval_s: float = 10.0
    # each new checkpoint is also written here (another disk, a mount of another host): a
    # witness holds signed tree heads the gateway's own database cannot take back
    audit_witness_dir: Path | None = None
    fax_scan_interval_s: float = 5.0  # fax drop folders: polling interval where inotify is missing
    # fax drop folders: received files analyzed at once, each in its own sandbox process
    # (unset: one per CPU)
    fax_ingest_concurrency: int | None = Field(default=None, ge=1)
    max_body_bytes: int = 512 * 1024 * 1024  # the largest request body the API accepts
    max_binary_bytes: int = 4 * 1024 * 1024 * 1024  # receive side: one uploaded document
    receive_upload_ttl_s: float = 7 * 24 * 3600.0  # an upload no bundle took is deleted after
    http_timeout_s: float = 60.0  # one outbound HTTP call (sources, peers)
    # unattended cases: signed authorizations an e-signature service drops here are
    # imported (then moved to done/ or rejected/ beside a .reason file)
    intake_dir: Path | None = None
    case_tick_s: float = 5.0  # how often open cases are checked (deadlines, polls, expiry)
    follow_up_settle_s: float = 2.0  # a burst of new records within this makes one follow-up
    # second-opinion center: the request intake, its provider directory, status links
    center: CenterConfig | None = None
    # DEBUG, INFO, WARNING, ERROR
    log_level: str = "INFO"
    # "json": one JSON object a line (time, level, logger, message, transfer_id, case_id)
    log_format: Literal["text", "json"] = "text"
    # GET /metrics is public by default (counts by state and kind: no ids, no records),
    # as Prometheus scrapes an internal port; with a token it asks for it as a bearer
    metrics_token: SecretStr | None = None
    metrics_enabled: bool = True  # false: /metrics answers 404
    # HTTPS for `serve` (gunicorn takes the same files: deploy/gunicorn.conf.py); with
    # tls_client_ca_file every client must present a certificate it signed (mutual TLS)
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None  # the private key of tls_cert_file
    tls_client_ca_file: Path | None = None  # mutual TLS: the CA client certificates must chain to

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings,
                                   dotenv_settings, file_secret_settings):
        return (init_settings, env_settings, _FileSource(settings_cls))

    @field_validator("database_url")
    @classmethod
    def _db_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("sqlite:", "postgresql")):
            raise ValueError("must be a sqlite:/// or postgresql:// URL")
        return v

    @model_validator(mode="after")
    def _receiver_sources(self) -> "Settings":
        for name, source in self.sources.items():
            if source.options.get("retrieve") == "receiver" and (
                    source.kind != "dicom" or self.dicom_receiver is None):
                raise ValueError(f"source {name}: retrieve = receiver needs a dicom source and "
                                 "dicom_receiver (the standing DICOM receiver) configured")
        return self

    @model_validator(mode="after")
    def _server_tls(self) -> "Settings":
        if (self.tls_cert_file is None) != (self.tls_key_file is None):
            raise ValueError("tls_cert_file and tls_key_file go together")
        if self.tls_client_ca_file is not None and self.tls_cert_file is None:
            raise ValueError("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")
        return self

    def server_tls(self) -> "ssl.SSLContext | None":
        """The TLS context `serve` listens with: TLS 1.2 at least; with
        tls_client_ca_file, a client certificate signed by that CA is required."""
        if self.tls_cert_file is None:
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.tls_cert_file, self.tls_key_file)
        if self.tls_client_ca_file is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(self.tls_client_ca_file)
        return context

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str | None) -> str | None:
        if v is not None and not v.startswith(("redis://", "rediss://")):
            raise ValueError("must be a redis:// URL")
        return v

    # derived paths -------------------------------------------------------------
    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{(self.data_dir / 'gateway.db').resolve()}"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def blobs_dir(self) -> Path:
        folder = self.blob_store.path if isinstance(self.blob_store, FolderStoreConfig) else None
        return folder or self.data_dir / "blobs"

    @property
    def work_dir(self) -> Path:
        return self.data_dir / "work"

    @property
    def broker_dir(self) -> Path:
        return self.data_dir / "broker"

    @property
    def issuers_file(self) -> Path:
        return self.trust_file or self.data_dir / "trust" / "issuers.json"

    @property
    def blob_key_path(self) -> Path:
        return self.blob_key_file or self.keys_dir / "blob.key"


class _FileSource(PydanticBaseSettingsSource):
    """Settings from the file named by GATEWAY_CONFIG_FILE (TOML or JSON)."""

    def get_field_value(self, field, field_name):  # pragma: no cover - unused
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        name = os.environ.get("GATEWAY_CONFIG_FILE")
        if not name:
            return {}
        path = Path(name)
        try:
            text = path.read_text()
        except OSError as exc:
            raise ConfigError(f"GATEWAY_CONFIG_FILE: cannot read {path}: {exc.strerror}") from None
        try:
            return json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"GATEWAY_CONFIG_FILE: {path} is not valid: {exc}") from None


def load_settings(overrides: dict[str, Any] | None = None) -> Settings:
    """Build the settings or raise ConfigError naming the first wrong setting."""
    try:
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "settings"
        env = "GATEWAY_" + "__".join(str(p) for p in first["loc"]).upper()
        raise ConfigError(f"setting {where} ({env}): {first['msg']}") from None
