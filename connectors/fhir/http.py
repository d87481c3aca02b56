"""HTTP for a FHIR server: one base URL, retries with Retry-After and jittered backoff,
timeouts, streamed downloads, and a guard that refuses any URL outside the base.

Every URL that comes from the server (Bundle next links, attachment URLs) goes through
`resolve()`: relative URLs are joined to the base, absolute ones must share its scheme,
host and port and sit under its path, so a hostile server cannot point us at an
internal address (SSRF).
"""
from __future__ import annotations

import email.utils
import ipaddress
import logging
import os
import random
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable
from urllib.parse import unquote, urljoin, urlsplit

import orjson
import requests

from connectors.base import SourceRejected, SourceUnavailable

log = logging.getLogger(__name__)


class _NoQueryInLog(logging.Filter):
    """urllib3 logs each request line at DEBUG. Finding the patient (`Patient?identifier=`,
    or family name and birth date) puts who the patient is in the query: cut every query
    from those records. Paths keep only the server's logical ids, never a business identifier."""

    _QUERY = re.compile(r"\?\S*")

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(self._QUERY.sub("?(query not logged)", a) if isinstance(a, str) else a
                                for a in record.args)
        return True


logging.getLogger("urllib3.connectionpool").addFilter(_NoQueryInLog())

FHIR_JSON = "application/fhir+json"
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
TRANSIENT_EXCEPTIONS = (requests.ConnectionError, requests.Timeout,
                        requests.exceptions.ChunkedEncodingError,
                        requests.exceptions.ContentDecodingError)


class OutsideBase(SourceRejected):
    """A URL from the server points outside its own base: refused (no SSRF)."""


class HttpRejected(SourceRejected):
    """The server answered with a 4xx/5xx that retrying will not change; `status` says which."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class RetryLater(SourceUnavailable):
    """The server asked us to come back later than we are willing to wait now."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class TooLarge(SourceRejected):
    """A download is larger than the configured limit."""


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _port(parts) -> int:
    return parts.port or (443 if parts.scheme == "https" else 80)


def check_base_url(url: str, allow_http: bool = False) -> str:
    """Validate a configured base URL; plain http only on loopback or when allowed."""
    parts = urlsplit(url)
    if parts.scheme not in ("https", "http") or not parts.hostname:
        raise SourceRejected(f"base_url must be an http(s) URL, got {url!r}")
    if parts.scheme == "http" and not (allow_http or is_loopback(parts.hostname)):
        raise SourceRejected(f"base_url {url!r} is plain http; use https (or set allow_http for a test server)")
    if parts.username or parts.password or parts.query or parts.fragment:
        raise SourceRejected("base_url must not carry credentials, a query or a fragment")
    return url.rstrip("/")


def under_base(url: str, base: str) -> bool:
    """True when `url` is on the same origin as `base` and under its path."""
    u, b = urlsplit(url), urlsplit(base)
    if u.scheme != b.scheme or (u.hostname or "").lower() != (b.hostname or "").lower():
        return False
    if _port(u) != _port(b) or u.username or u.password:
        return False
    segments = unquote(u.path).split("/")
    if any(s in (".", "..") for s in segments) or "\\" in unquote(u.path):
        return False
    prefix = b.path.rstrip("/")
    return u.path == prefix or u.path.startswith(prefix + "/")


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds (delta-seconds or an HTTP date), None when absent or bad."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (now if now is not None else time.time()))


def outcome_summary(body: bytes, limit: int = 300) -> str:
    """The diagnostics of an OperationOutcome body, shortened; '' when there is none."""
    try:
        doc = orjson.loads(body)
    except (orjson.JSONDecodeError, TypeError):
        return ""
    if not isinstance(doc, dict):
        return ""
    if doc.get("resourceType") != "OperationOutcome":
        parts = [str(doc[k]) for k in ("error", "error_description") if doc.get(k)]  # OAuth errors
        return ": ".join(parts)[:limit]
    bits = []
    for issue in doc.get("issue") or ():
        if isinstance(issue, dict):
            bits.append(str(issue.get("diagnostics") or issue.get("code") or ""))
    return "; ".join(b for b in bits if b)[:limit]


@dataclass
class Fetched:
    """A successful response: its body in memory (`content`) or in a file (`path`)."""

    url: str
    status: int
    headers: dict
    content: bytes = b""
    path: Path | None = None
    size: int = 0
    attempts: int = 1


@dataclass
class RetryPolicy:
    max_retries: int = 5
    backoff: float = 0.5  # first backoff, doubled each time, full jitter
    backoff_max: float = 30.0
    max_retry_after: float = 120.0  # a longer Retry-After stops the source (retried later)
    max_total_wait: float = 300.0
    sleep: Callable[[float], None] = time.sleep
    rng: Callable[[], float] = random.random

    def delay(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return retry_after
        return self.rng() * min(self.backoff_max, self.backoff * (2 ** attempt))


@dataclass
class FhirHttp:
    base_url: str
    auth: object  # connectors.fhir.smart auth: apply(headers), refresh() -> bool
    timeout: tuple[float, float] = (10.0, 60.0)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    extra_bases: tuple[str, ...] = ()
    verify: bool | str = True
    user_agent: str = "records-gateway-fhir/0.1"
    max_download: int = 2 << 30
    session: requests.Session = field(default_factory=requests.Session)
    on_bytes: Callable[[int], None] = lambda n: None

    def __post_init__(self):
        self.session.headers["User-Agent"] = self.user_agent
        self.session.verify = self.verify

    def close(self) -> None:
        self.session.close()

    # -- URLs -------------------------------------------------------------------
    def resolve(self, url: str) -> str:
        """Absolute URL for `url` (relative to the base); refuses anything outside it."""
        absolute = urljoin(self.base_url + "/", url)
        if under_base(absolute, self.base_url) or any(under_base(absolute, b) for b in self.extra_bases):
            return absolute
        raise OutsideBase(f"refused URL outside the server base {self.base_url}: {_redact(absolute)}")

    # -- requests ---------------------------------------------------------------
    def get(self, url: str, params: dict | list | None = None, accept: str = FHIR_JSON,
            to_dir: Path | None = None, authenticated: bool = True) -> Fetched:
        """GET with retries. `to_dir`: stream the body to a new file there."""
        return self._send("GET", self.resolve(url), params=params, accept=accept, to_dir=to_dir,
                          authenticated=authenticated)

    def post_form(self, url: str, data: dict, accept: str = "application/json") -> Fetched:
        """POST a form (token requests); `url` is trusted configuration or discovery."""
        return self._send("POST", url, data=data, accept=accept, authenticated=False)

    def post_json(self, url: str, doc: dict) -> Fetched:
        """POST a FHIR resource (a create). Sent once: a retried create could leave two
        resources at the server."""
        return self._send("POST", self.resolve(url), data=orjson.dumps(doc), accept=FHIR_JSON,
                          content_type=FHIR_JSON, once=True)

    def delete(self, url: str) -> Fetched:
        """DELETE a resource (idempotent, so retried like a GET)."""
        return self._send("DELETE", self.resolve(url), accept=FHIR_JSON)

    def _send(self, method: str, url: str, *, params=None, data=None, accept: str,
              to_dir: Path | None = None, authenticated: bool = True, content_type: str | None = None,
              once: bool = False) -> Fetched:
        policy = self.retry
        waited = 0.0
        refreshed = False
        attempt = 0
        while True:
            headers = {"Accept": accept}
            if content_type:
                headers["Content-Type"] = content_type
            if authenticated:
                self.auth.apply(headers)
            problem: str
            retry_after: float | None = None
            try:
                resp = self.session.request(method, url, params=params, data=data, headers=headers,
                                            timeout=self.timeout, stream=True, allow_redirects=False)
            except TRANSIENT_EXCEPTIONS as exc:
                problem = f"{type(exc).__name__} on {method} {_redact(url)}"
            else:
                with resp:
                    status = resp.status_code
                    if status < 300:
                        try:
                            return self._body(resp, url, to_dir, attempt + 1)
                        except TRANSIENT_EXCEPTIONS as exc:
                            problem = f"{type(exc).__name__} while reading {_redact(url)}"
                        except _Truncated as exc:
                            problem = str(exc)
                    elif status == 401 and authenticated and not refreshed and self.auth.refresh():
                        refreshed = True
                        continue
                    elif status in RETRY_STATUSES:
                        retry_after = retry_after_seconds(resp.headers.get("Retry-After"))
                        problem = f"HTTP {status} on {method} {_redact(url)}"
                        if retry_after is not None and retry_after > policy.max_retry_after:
                            raise RetryLater(f"{problem}: server asks to retry after {retry_after:.0f}s",
                                             retry_after)
                    elif 300 <= status < 400:
                        raise SourceRejected(f"HTTP {status} redirect on {method} {_redact(url)} "
                                             f"(redirects are not followed)")
                    else:
                        detail = outcome_summary(resp.raw.read(65536, decode_content=True) or b"")
                        raise HttpRejected(f"HTTP {status} on {method} {_redact(url)}"
                                           + (f": {detail}" if detail else ""), status) from None
            if once or attempt >= policy.max_retries:
                raise SourceUnavailable(f"{problem}; gave up after {attempt + 1} attempts")
            delay = policy.delay(attempt, retry_after)
            if waited + delay > policy.max_total_wait:
                raise RetryLater(f"{problem}; waited {waited:.0f}s already", delay)
            log.info("fhir: %s; retrying in %.2fs", problem, delay)
            policy.sleep(delay)
            waited += delay
            attempt += 1

    def _body(self, resp: requests.Response, url: str, to_dir: Path | None, attempts: int) -> Fetched:
        expected = resp.headers.get("Content-Length")
        expected_n = int(expected) if expected and expected.isdigit() else None
        if expected_n is not None and expected_n > self.max_download:
            raise TooLarge(f"{_redact(url)} is {expected_n} bytes, over the {self.max_download} limit")
        headers = {k.lower(): v for k, v in resp.headers.items()}
        size = 0
        if to_dir is None:
            chunks = []
            for chunk in resp.iter_content(1 << 16):
                size += len(chunk)
                chunks.append(chunk)
                self._check_size(size, url)
            content = b"".join(chunks)
            self._check_length(resp, expected_n, url)
            self.on_bytes(size)
            return Fetched(resp.url or url, resp.status_code, headers, content=content, size=size,
                           attempts=attempts)
        fd, name = tempfile.mkstemp(dir=to_dir, prefix=".dl-", suffix=".part")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as fh:
                for chunk in resp.iter_content(1 << 20):
                    size += len(chunk)
                    self._check_size(size, url)
                    fh.write(chunk)
            self._check_length(resp, expected_n, url)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        self.on_bytes(size)
        return Fetched(resp.url or url, resp.status_code, headers, path=path, size=size, attempts=attempts)

    def _check_size(self, size: int, url: str) -> None:
        if size > self.max_download:
            raise TooLarge(f"{_redact(url)} is over the {self.max_download} byte limit")

    @staticmethod
    def _check_length(resp: requests.Response, expected: int | None, url: str) -> None:
        # with Content-Encoding the header counts compressed bytes; urllib3 checks those
        if expected is not None and not resp.headers.get("Content-Encoding"):
            got = resp.raw.tell()
            if got < expected:
                raise _Truncated(f"truncated response from {_redact(url)}: {got} of {expected} bytes")


class _Truncated(Exception):
    pass


def _redact(url: str) -> str:
    """A URL for messages: without its query (search values can identify a patient)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}{parts.path}" + ("?..." if parts.query else "")
