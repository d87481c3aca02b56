"""Error types a caller can act on.

One root, `GatewayError`. `transient` decides whether a task retries the step
(outage, timeout) or records a terminal failure (bad input, denied). The API turns
each into a FHIR OperationOutcome with `http_status`; the CLI into one line.
"""
from __future__ import annotations

import errno


class GatewayError(Exception):
    """Root of every error the gateway raises on purpose."""

    transient = False
    http_status = 400
    code = "processing"  # FHIR IssueType

    def __init__(self, message: str, **details):
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        return self.message


class ConfigError(GatewayError):
    """A setting is missing or invalid; the message names it."""

    code = "invalid"
    http_status = 500


class InvalidInput(GatewayError):
    """A request body or file from outside is malformed."""

    code = "invalid"
    http_status = 400


class PayloadTooLarge(InvalidInput):
    http_status = 413
    code = "too-costly"


class NotFound(GatewayError):
    code = "not-found"
    http_status = 404


class Conflict(GatewayError):
    code = "conflict"
    http_status = 409


class Gone(GatewayError):
    """It existed but can no longer be used (an expired or used invitation link)."""
    code = "gone"
    http_status = 410


class Unauthenticated(GatewayError):
    code = "login"
    http_status = 401


class Forbidden(GatewayError):
    code = "forbidden"
    http_status = 403


class AuthorizationDenied(GatewayError):
    """The release authorization is invalid or does not cover what was asked."""

    code = "forbidden"
    http_status = 403


class AuthorizationInvalid(AuthorizationDenied):
    """Signature, issuer or a required HIPAA element is wrong or missing."""

    code = "invalid"
    http_status = 422


class AuthorizationTooLarge(AuthorizationInvalid):
    """The authorization is larger than the gateway accepts (the message says the cap)."""

    code = "too-costly"
    http_status = 413


class AuthorizationExpired(AuthorizationDenied):
    code = "expired"


class AuthorizationNotYetValid(AuthorizationDenied):
    code = "forbidden"


class AuthorizationRevoked(AuthorizationDenied):
    code = "forbidden"


class ProviderUnavailable(GatewayError):
    """A source system is down or slow; the step is retried later."""

    transient = True
    code = "transient"
    http_status = 503


class ProviderRejected(GatewayError):
    """A source system refused the request (bad credentials, no such patient)."""

    code = "processing"
    http_status = 502


class MappingError(GatewayError):
    """A raw record could not be turned into valid FHIR; `origin` names the record."""

    code = "structure"
    http_status = 422

    def __init__(self, message: str, origin: str = "", **details):
        super().__init__(message, origin=origin, **details)
        self.origin = origin


class DeliveryFailed(GatewayError):
    """The recipient could not be reached or answered with an error; retried."""

    transient = True
    code = "transient"
    http_status = 502


class DeliveryRejected(GatewayError):
    """The recipient refused the bundle for good (4xx other than 408/429)."""

    code = "processing"
    http_status = 502


class ReceiptInvalid(GatewayError):
    """A delivery receipt is unsigned, badly signed, or does not match what was sent."""

    code = "security"
    http_status = 502


class ReceiptRefused(ReceiptInvalid):
    """A receipt a peer posted to us (an "opened" receipt on POST /receipts) is malformed,
    badly signed or names nothing of ours: the peer's request is at fault, not an answer
    we were waiting for."""

    http_status = 422


class BlobCorrupted(GatewayError):
    """A stored blob failed authentication (tampered, truncated or wrong key)."""

    code = "exception"
    http_status = 500


class BlobStoreUnavailable(GatewayError):
    """The object store holding blobs could not be reached or refused a request; retried."""

    transient = True
    code = "transient"
    http_status = 503


class NotificationFailed(GatewayError):
    """A webhook or mail server could not be reached or answered "later"; retried, then
    dead-lettered (replayable)."""

    transient = True
    code = "transient"
    http_status = 502


class NotificationRejected(GatewayError):
    """A webhook or mail server refused a notification for good (4xx other than 408/429,
    a permanent SMTP error, an untrusted certificate): dead at once, replayable once fixed."""

    code = "processing"
    http_status = 502


class StorageFull(GatewayError):
    """A folder of this gateway (blob store, work folder) has no space left. Transient:
    the step is retried, and the transfer goes on by itself once there is room."""

    transient = True
    http_status = 507
    code = "exception"


NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})  # a full disk, or a quota reached


def no_space(exc: BaseException) -> bool:
    """Whether an OSError says the disk (or the user's quota) is full."""
    return isinstance(exc, OSError) and exc.errno in NO_SPACE


class ColumnCorrupted(GatewayError):
    """A sealed database value failed authentication (changed, moved from another column,
    or sealed under another deployment's at-rest key)."""

    code = "exception"
    http_status = 500
