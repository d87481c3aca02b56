"""`records-gateway doctor`: is this installation ready to run? One line a check, "ok" or
"FAIL", and exit status 1 when any failed.

Checks, in order: the configuration loads; the keys (signing keys, the blob encryption
key, the patient-key secret) load; the database answers with its schema at the newest
migration; the broker answers; the blob store writes, reads and deletes a probe; each
configured source answers its connector's `check()` (FHIR `GET /metadata`, DICOM C-ECHO,
folders readable); each peer answers `GET /health` (a gateway) or `GET /metadata` (a
FHIR server) over TLS checked against its `ca_file`; the standing DICOM receiver, when
configured, answers an association (and its GET /health). Each has a time limit; nothing
printed holds a secret (URLs lose their user and password).
"""
from __future__ import annotations

import re
import threading
from pathlib import Path

import click

from gateway.runtime.health import (
    Check,
    check_blobs,
    check_broker,
    check_database,
    check_dicom_receiver,
    check_keys,
    error_line,
    redacted,
)


class Failed(Exception):
    """A check's failure, said in full by its message."""


def _line(check: Check) -> None:
    click.echo(f"{'ok' if check.ok else 'FAIL':<4} {check.name}: {check.detail}")


def _within(name: str, timeout: float, probe) -> Check:
    """Run `probe` (returns a Check, or a detail line, or raises) in a thread; FAIL after
    `timeout` (a host that drops packets would hold a connection for minutes)."""
    result: list[Check] = []

    def run() -> None:
        try:
            answer = probe()
            result.append(answer if isinstance(answer, Check) else Check(name, True, answer))
        except Failed as exc:
            result.append(Check(name, False, str(exc)))
        except Exception as exc:  # any failure is a line, never a traceback
            result.append(Check(name, False, error_line(exc)))

    thread = threading.Thread(target=run, name=f"doctor {name}", daemon=True)
    thread.start()
    thread.join(timeout)
    return result[0] if result else Check(name, False, f"no answer within {timeout:g}s")


def _keys(settings) -> tuple[list[Check], bytes | None]:
    from gateway.storage.blobstore import load_master_key
    from gateway.trust.keys import SigningKeys, patient_key_secret

    checks = [check_keys(SigningKeys(settings.keys_dir))]
    master = None
    try:
        secret = settings.blob_key.get_secret_value() if settings.blob_key else None
        master = load_master_key(secret, settings.blob_key_path)
        where = "GATEWAY_BLOB_KEY / blob_key" if secret else str(settings.blob_key_path)
        checks.append(Check("blob key", True, f"32-byte key from {where}"))
    except Exception as exc:
        checks.append(Check("blob key", False, error_line(exc)))
    path = Path(settings.keys_dir) / "patient-key.secret"
    if not path.exists():  # doctor looks, it does not make one
        checks.append(Check("patient secret", False, f"{path} is missing (run `records-gateway init`)"))
    else:
        try:
            patient_key_secret(settings.keys_dir)
            checks.append(Check("patient secret", True, f"{path} loads"))
        except Exception as exc:
            checks.append(Check("patient secret", False, error_line(exc)))
    return checks, master


def _source_probe(svc, name: str, cfg, timeout: float):
    from connectors import connector_class
    from gateway.engine.sources import connector_options

    def probe() -> str:
        options = connector_options(svc, cfg, name)
        if cfg.kind == "fhir-rest":  # one quick try, not the pull's patient retries
            options = {**options, "timeout": (timeout, timeout), "max_retries": 0}
        with connector_class(cfg.kind)(name, options, svc.settings.work_dir / "doctor") as conn:
            conn.check()
        return f"{cfg.kind} {_where(cfg)} answers"

    return probe


def _where(cfg) -> str:
    o = cfg.options
    if o.get("base_url"):
        return redacted(str(o["base_url"]))
    if o.get("host"):
        return f"{o.get('ae_title', '')}@{o['host']}:{o.get('port', '')}".lstrip("@")
    return str(o.get("path") or o.get("drop") or cfg.endpoint)


def _peer_probe(peer, timeout: float):
    import requests

    url = f"{peer.base_url}/{'health' if peer.kind == 'gateway' else 'metadata'}"

    def probe() -> str:
        try:
            r = requests.get(url, timeout=timeout, allow_redirects=False, **peer.tls())
        except requests.exceptions.SSLError as exc:
            reason = str(exc.args[0] if exc.args else exc)
            reason = "certificate verify failed" if "CERTIFICATE_VERIFY_FAILED" in reason else "TLS handshake failed"
            raise Failed(f"{redacted(url)}: {reason} (ca_file: "
                         f"{peer.ca_file or 'the system CAs'})") from None
        except requests.RequestException as exc:
            raise Failed(f"{redacted(url)}: {_cause(exc)}") from None
        if r.status_code != 200:
            raise Failed(f"{redacted(url)} answered {r.status_code}")
        return f"{redacted(url)} answers 200"

    return probe


def _cause(exc: Exception) -> str:
    """The operating system's reason inside a requests error ("Connection refused"), else
    the error's type: requests' own text repeats the URL and the pool's internals."""
    found = re.search(r"\[Errno -?\d+\] ([^'\")]+)", str(exc))
    return found.group(1).strip() if found else type(exc).__name__


@click.command()
@click.option("--timeout", type=float, default=10.0, show_default=True,
              help="Seconds each source and peer may take to answer.")
@click.pass_context
def doctor(ctx: click.Context, timeout: float) -> None:
    """Check configuration, keys, database, broker, blob store, sources and peers."""
    from gateway.config import load_settings
    from gateway.errors import GatewayError
    from gateway.runtime.services import Services
    from gateway.storage.blobstore import BlobStore
    from gateway.storage.db import Database
    from gateway.trust.keys import SigningKeys

    checks: list[Check] = []

    def report(check: Check) -> None:
        checks.append(check)
        _line(check)

    try:
        settings = load_settings()
    except GatewayError as exc:
        report(Check("configuration", False, str(exc)))
        ctx.exit(1)
    report(Check("configuration", True, f"{len(settings.sources)} source(s), "
                 f"{len(settings.peers)} peer(s), mode {settings.mode}, data dir {settings.data_dir}"))
    key_checks, master = _keys(settings)
    for check in key_checks:
        report(check)
    # the sealed columns are not read, so without a blob key a stand-in opens the database
    key = master or bytes(32)
    db = None
    if settings.db_url.startswith("sqlite:///") and \
            not Path(settings.db_url.removeprefix("sqlite:///").split("?")[0]).exists():
        report(Check("database", False, "the SQLite file does not exist (run `records-gateway init`)"))
    else:
        db = Database(settings.db_url, key)
        report(_within("database", timeout, lambda: check_database(db, schema=True)))
    try:
        report(check_broker(settings, timeout))
        try:
            blobs = BlobStore(settings.blobs_dir, key)
        except OSError as exc:
            blobs = None
            report(Check("blob store", False, f"{settings.blobs_dir}: {error_line(exc)}"))
        if blobs is not None:
            report(check_blobs(blobs) if master else
                   Check("blob store", False, "not checked: the blob key does not load"))
        # what the connectors' options need of the services (their checks use neither
        # the database nor the blobs)
        svc = Services(settings=settings, db=db, blobs=blobs, keys=SigningKeys(settings.keys_dir),
                       patient_secret=b"")
        for name, cfg in sorted(settings.sources.items()):
            report(_within(f"source {name}", timeout + 2, _source_probe(svc, name, cfg, timeout)))
        for name, peer in sorted(settings.peers.items()):
            report(_within(f"peer {name}", timeout + 2, _peer_probe(peer, timeout)))
        if settings.dicom_receiver is not None:
            report(_within("dicom receiver", timeout + 2,
                           lambda: check_dicom_receiver(settings.dicom_receiver, timeout)))
    finally:
        if db is not None:
            db.dispose()
    if not all(c.ok for c in checks):
        ctx.exit(1)
