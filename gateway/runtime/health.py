"""Readiness: can this process do its work now? Each check tries the real thing once
(a query, a broker connection, a probe blob written, read and deleted, the signing keys
loaded) and says in one line what failed, naming no secret. `GET /ready` and
`records-gateway doctor` run the same checks."""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from sqlalchemy import text

from gateway.config import Settings
from gateway.storage.blobstore import BlobStore
from gateway.storage.db import Database
from gateway.trust.keys import PURPOSES, SigningKeys


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def error_line(exc: BaseException) -> str:
    """An error in a line, without the arguments a driver may echo (URLs, statements)."""
    text = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}"[:300] if first else type(exc).__name__


def redacted(url: str) -> str:
    """A URL without its user and password (scheme, host, port and path only)."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def check_database(db: Database, schema: bool = False) -> Check:
    """The database answers a query; with `schema`, its schema is at the newest migration."""
    where = redacted(db.url) if db.url.startswith("postgresql") else "sqlite"
    try:
        with db.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        version = ".".join(str(n) for n in (db.engine.dialect.server_version_info or ())[:2])
        revisions = db.revisions() if schema else None
    except Exception as exc:
        return Check("database", False, f"{where} does not answer: {error_line(exc)}")
    detail = f"{db.engine.dialect.name} {version} answers"
    if revisions is not None:
        current, head = revisions
        if current != head:
            return Check("database", False, f"{detail}, but its schema is at {current or 'none'}"
                                            f" and the newest is {head}: run `records-gateway init`")
        detail += f", schema at {head}"
    return Check("database", True, detail)


def check_broker(settings: Settings, timeout: float = 3.0) -> Check:
    """Redis answers PING, or the embedded broker's queue folder takes a file."""
    if settings.redis_url:
        import redis

        where = redacted(settings.redis_url)
        try:
            client = redis.Redis.from_url(settings.redis_url, socket_connect_timeout=timeout,
                                          socket_timeout=timeout)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:
            return Check("broker", False, f"{where} does not answer: {error_line(exc)}")
        return Check("broker", True, f"{where} answers")
    folder = settings.broker_dir / "queue"
    probe = folder / f".ready-{secrets.token_hex(8)}.part"  # a name workers never take
    try:
        folder.mkdir(parents=True, exist_ok=True)  # as the first process to start makes it
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        return Check("broker", False, f"embedded broker folder {folder} is not writable: "
                                      f"{exc.strerror or type(exc).__name__}")
    return Check("broker", True, f"embedded broker folder {folder} is writable")


def check_blobs(blobs: BlobStore) -> Check:
    """A probe blob written, read back equal, and deleted."""
    data = secrets.token_bytes(32)
    try:
        info = blobs.put_bytes(data)
        try:
            same = blobs.read_bytes(info.key) == data
        finally:
            blobs.delete(info.key)
    except Exception as exc:
        return Check("blob store", False, f"{blobs.backend} cannot write, read and delete a "
                                          f"probe blob: {error_line(exc)}")
    if not same:
        return Check("blob store", False, f"{blobs.backend} returned other bytes than written")
    return Check("blob store", True, f"{blobs.backend} writes, reads and deletes")


def check_keys(keys: SigningKeys) -> Check:
    """A current signing key for every purpose, each loadable."""
    try:
        kids = [keys.current(purpose).kid for purpose in PURPOSES]
    except Exception as exc:
        return Check("keys", False, f"signing keys do not load: {error_line(exc)}")
    return Check("keys", True, f"{len(kids)} signing keys load ({', '.join(PURPOSES)})")


def readiness(svc) -> list[Check]:
    """Every readiness check of a running process's services."""
    return [check_database(svc.db), check_broker(svc.settings), check_blobs(svc.blobs),
            check_keys(svc.keys)]


def check_dicom_receiver(conf, timeout: float = 5.0) -> Check:
    """The standing DICOM receiver (`dicom_receiver`) answers an association on its
    address: a C-ECHO where it accepts us, or its refusal of a caller that is not a PACS
    source ("calling AE title not recognized": it listens, and refuses as configured);
    with `health_port`, its GET /health answers 200 as well."""
    from pynetdicom.sop_class import Verification

    from connectors.dicom.net import FastAE

    where = f"{conf.ae_title}@{conf.reach()}:{conf.port}"
    ae = FastAE(ae_title="RG-DOCTOR")
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.connection_timeout = ae.dimse_timeout = timeout
    try:
        assoc = ae.associate(conf.reach(), conf.port, ae_title=conf.ae_title)
    except OSError as exc:
        return Check("dicom receiver", False, f"{where}: {error_line(exc)}")
    if assoc.is_established:
        try:
            status = assoc.send_c_echo()
        finally:
            assoc.release()
        if not status or status.Status != 0x0000:
            return Check("dicom receiver", False, f"{where}: C-ECHO failed")
        detail = f"{where} answers C-ECHO"
    elif assoc.is_rejected and _rejection(assoc) == (0x01, 0x01, 0x03):  # calling AE
        detail = f"{where} answers (refuses callers that are not PACS sources)"
    else:
        return Check("dicom receiver", False, f"{where} does not accept an association")
    if conf.health_port:
        import requests

        url = f"http://{conf.reach()}:{conf.health_port}/health"
        try:
            r = requests.get(url, timeout=timeout)
        except requests.RequestException as exc:
            return Check("dicom receiver", False, f"{detail}, but {url}: {type(exc).__name__}")
        if r.status_code != 200:
            return Check("dicom receiver", False, f"{detail}, but {url} answered {r.status_code}")
        detail += ", /health 200"
    return Check("dicom receiver", True, detail)


def _rejection(assoc) -> tuple:
    """An A-ASSOCIATE-RJ's (result, source, reason)."""
    rsp = getattr(assoc.acceptor, "primitive", None)
    return (getattr(rsp, "result", None), getattr(rsp, "result_source", None),
            getattr(rsp, "diagnostic", None))
