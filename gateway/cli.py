"""The `records-gateway` command line.

Every error a user can act on is one line on stderr and a non-zero exit; never a
traceback.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from pathlib import Path

import click

from .errors import GatewayError

log = logging.getLogger("gateway")


def _services():
    from .config import load_settings
    from .services import init_services

    return init_services(load_settings())


def _out(data) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))


class _Group(click.Group):
    """Turns our errors into one line and exit status 1 (2 for bad usage, as click does)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except GatewayError as exc:
            click.echo(f"error: {exc}", err=True)
            ctx.exit(1)
        except OSError as exc:
            click.echo(f"error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), err=True)
            ctx.exit(1)


@click.group(cls=_Group)
@click.option("--log-level", default=None, help="DEBUG, INFO, WARNING (default from settings).")
def main(log_level: str | None) -> None:
    """Records interoperability gateway for second opinions."""
    logging.basicConfig(level=(log_level or os.environ.get("GATEWAY_LOG_LEVEL", "INFO")).upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# --- setup ---------------------------------------------------------------------------

@main.command()
@click.option("--data-dir", type=click.Path(path_type=Path), default=None,
              help="Where state lives (default: GATEWAY_DATA_DIR or ./gateway-data).")
def init(data_dir: Path | None) -> None:
    """Create the data dir, the blob encryption key, the signing key and the trust store."""
    from .blobstore import new_master_key
    from .config import load_settings
    from .keys import SigningKeys

    settings = load_settings({"data_dir": data_dir} if data_dir else None)
    settings.keys_dir.mkdir(parents=True, exist_ok=True)
    key_path = settings.blob_key_path
    if settings.blob_key is None and not key_path.exists():
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(new_master_key())
        click.echo(f"created blob encryption key {key_path} (back it up: without it the "
                   "records in flight cannot be read)")
    kid = SigningKeys(settings.keys_dir).ensure()
    click.echo(f"signing key: {kid}")
    from .faxes import ensure_cover_key

    ensure_cover_key(settings.keys_dir)
    from .keys import ClientKeys

    click.echo(f"SMART client key: {ClientKeys(settings.keys_dir).ensure()}")
    issuers = settings.issuers_file
    if not issuers.exists():
        issuers.parent.mkdir(parents=True, exist_ok=True)
        issuers.write_text(json.dumps({"keys": [], "issuers": {}}, indent=2))
        click.echo(f"created empty issuer trust store {issuers}: add the issuers you accept")
    from .db import Database

    Database(settings.db_url).upgrade()
    click.echo(f"database ready: {settings.db_url.split('?')[0]}")


@main.command()
@click.option("--receive", is_flag=True, help="Receive mode only (a second-opinion center).")
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
@click.option("--no-worker", is_flag=True, help="Do not run the embedded worker.")
def serve(receive: bool, host: str | None, port: int | None, no_worker: bool) -> None:
    """Serve the API; on the embedded default also run a worker in this process."""
    from werkzeug.serving import make_server

    from . import create_app

    overrides = {k: v for k, v in {"mode": "receive" if receive else None, "host": host,
                                   "port": port}.items() if v is not None}
    app = create_app(overrides)
    svc = app.extensions["gateway"]
    server = make_server(svc.settings.host, svc.settings.port, app, threaded=True)
    log.info("serving %s mode on http://%s:%d", svc.settings.mode, svc.settings.host,
             server.server_port)
    embedded = svc.settings.redis_url is None and svc.settings.mode != "receive" and not no_worker
    if not embedded:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        return
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    try:
        _run_worker(svc, concurrency=2, beat=True, pool="threads")
    finally:
        server.shutdown()


def _run_worker(svc, concurrency: int, beat: bool, pool: str | None) -> None:
    from .celery_app import celery

    options = {"concurrency": concurrency, "beat": beat,
               "loglevel": svc.settings.log_level, "hostname": f"gateway@{os.uname().nodename}-{os.getpid()}",
               "without_mingle": True, "without_gossip": True, "quiet": True}
    if pool:
        options["pool"] = pool
    if beat:
        options["schedule_filename"] = str(svc.settings.data_dir / "beat-schedule")
    worker = celery.Worker(**options)
    worker.start()
    if worker.exitcode:
        raise SystemExit(worker.exitcode)


@main.command()
@click.option("--concurrency", type=int, default=2, show_default=True)
@click.option("--beat/--no-beat", default=False,
              help="Also run the periodic reconciler (run it in exactly one worker).")
@click.option("--pool", type=click.Choice(["prefork", "threads", "solo"]), default="threads",
              show_default=True)
def worker(concurrency: int, beat: bool, pool: str) -> None:
    """Run a Celery worker for transfer steps (Redis or the embedded broker)."""
    _run_worker(_services(), concurrency, beat, pool)


# --- tokens --------------------------------------------------------------------------

@main.group()
def token() -> None:
    """API tokens."""


@token.command("create")
@click.option("--name", required=True, help="Who or what uses it (shown in the audit log).")
@click.option("--role", required=True,
              type=click.Choice(["operator", "recipient", "auditor", "admin", "peer"]))
@click.option("--organization", default=None,
              help="Recipient tokens: the center whose inbox it reads (default: this gateway's).")
def token_create(name: str, role: str, organization: str | None) -> None:
    """Create a token; it is printed once and stored only hashed."""
    from .tokens import create_token

    svc = _services()
    with svc.db.session() as s:
        row, plain = create_token(s, name, role, actor="cli", organization=organization)
        token_id = row.id
    click.echo(f"token id {token_id} ({role}):", err=True)
    click.echo(plain)


@token.command("revoke")
@click.argument("token_id")
def token_revoke(token_id: str) -> None:
    from .tokens import revoke_token

    svc = _services()
    with svc.db.session() as s:
        revoke_token(s, token_id, actor="cli")
    click.echo(f"token {token_id} revoked")


# --- authorizations ------------------------------------------------------------------

@main.group()
def authorization() -> None:
    """Signed release authorizations."""


def _read_jws(source) -> str:
    return source.read().strip()


@authorization.command("import")
@click.argument("source", type=click.File("r"))
def authorization_import(source) -> None:
    """Verify and store a signed authorization (a file with the compact JWS, or -)."""
    from .operations import authorization_view, import_authorization

    row = import_authorization(_services(), _read_jws(source), actor="cli", role="operator")
    _out(authorization_view(row))


@authorization.command("verify")
@click.argument("source", type=click.File("r"))
def authorization_verify(source) -> None:
    """Verify a signed authorization without storing it."""
    from .authorizations import verify_authorization
    from .operations import trust_store

    verified = verify_authorization(_read_jws(source), trust_store(_services()))
    click.echo(f"valid: authorization {verified.id} from {verified.issuer}, "
               f"expires {verified.expires_at.isoformat()}")


@authorization.command("revoke")
@click.argument("authorization_id")
@click.option("--reason", required=True)
def authorization_revoke(authorization_id: str, reason: str) -> None:
    """Revoke at once; transfers in flight under it are cancelled."""
    from .operations import revoke_authorization

    row, stopped = revoke_authorization(_services(), authorization_id, reason, actor="cli",
                                        role="operator")
    click.echo(f"authorization {row.id} revoked; {stopped} transfer(s) cancelled")


# --- transfers -----------------------------------------------------------------------

@main.group()
def transfer() -> None:
    """Transfers of records to a recipient."""


@transfer.command("create")
@click.option("--authorization", "authorization_id", required=True)
@click.option("--source", "sources", multiple=True, required=True, help="Configured source name.")
@click.option("--recipient", required=True, help="Configured peer name.")
def transfer_create(authorization_id: str, sources: tuple[str, ...], recipient: str) -> None:
    from .operations import create_transfer

    _out(create_transfer(_services(), authorization_id, list(sources), recipient, actor="cli",
                         role="operator"))


@transfer.command("status")
@click.argument("transfer_id")
@click.option("--follow", is_flag=True, help="Show a progress bar until the transfer ends.")
@click.option("--timeout", type=float, default=None, help="Give up following after N seconds.")
def transfer_status(transfer_id: str, follow: bool, timeout: float | None) -> None:
    from .operations import get_transfer
    from .transfers import TERMINAL

    svc = _services()
    view = get_transfer(svc, transfer_id)
    if follow:
        view = follow_transfer(lambda: get_transfer(svc, transfer_id), timeout)
    _out(view)
    if view["state"] in ("failed", "cancelled", "dead_letter"):
        raise GatewayError(f"transfer {transfer_id} {view['state']}: {view['reason']}")
    if follow and view["state"] not in TERMINAL:
        raise GatewayError(f"transfer {transfer_id} still {view['state']} after {timeout}s")


def follow_transfer(fetch, timeout: float | None) -> dict:
    """Poll until the transfer ends, drawing a progress bar on stderr."""
    from .transfers import PARKED, TERMINAL

    deadline = time.monotonic() + timeout if timeout else None
    view = fetch()
    with click.progressbar(length=100, label="transfer", file=sys.stderr,
                           show_percent=True, show_eta=False,
                           item_show_func=lambda _: view["state"]) as bar:
        while True:
            bar.update(view["percent"] - bar.pos)
            if view["state"] in TERMINAL | PARKED or (deadline and time.monotonic() > deadline):
                return view
            time.sleep(0.3)
            view = fetch()


@transfer.command("list")
@click.option("--state", default=None)
@click.option("--authorization", "authorization_id", default=None)
@click.option("--limit", type=int, default=50)
def transfer_list(state, authorization_id, limit) -> None:
    from .operations import list_transfers

    for t in list_transfers(_services(), state, authorization_id, limit):
        click.echo(f"{t['id']}  {t['state']:<16} {t['percent']:>3}%  {t['recipient']}  "
                   f"{t['createdAt']}")


@transfer.command("retry")
@click.argument("transfer_id")
@click.option("--skip-failed-items", is_flag=True,
              help="Deliver the rest without the records that cannot be mapped.")
def transfer_retry(transfer_id: str, skip_failed_items: bool) -> None:
    from .operations import retry_transfer

    view = retry_transfer(_services(), transfer_id, "cli", "operator", skip_failed_items)
    click.echo(f"transfer {transfer_id} resumes at {view['state']}")


@transfer.command("replay")
@click.argument("transfer_id")
def transfer_replay(transfer_id: str) -> None:
    """Deliver a dead-lettered transfer again."""
    from .operations import replay_transfer

    view = replay_transfer(_services(), transfer_id, "cli", "operator")
    click.echo(f"transfer {transfer_id} resumes at {view['state']}")


@transfer.command("cancel")
@click.argument("transfer_id")
@click.option("--reason", default="cancelled by an operator")
def transfer_cancel(transfer_id: str, reason: str) -> None:
    from .operations import cancel_transfer

    cancel_transfer(_services(), transfer_id, reason, "cli", "operator")
    click.echo(f"transfer {transfer_id} cancelled")


@transfer.command("cover-sheet")
@click.argument("transfer_id")
@click.option("--source", default=None, help="The fax source (needed when there are several).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def transfer_cover_sheet(transfer_id: str, source: str | None, out: Path) -> None:
    """Write the records-request cover sheet the provider faxes back first."""
    from .faxes import cover_sheet

    out.write_bytes(cover_sheet(_services(), transfer_id, source, "cli", "operator"))
    click.echo(f"cover sheet written to {out}")


# --- faxes ---------------------------------------------------------------------------

@main.group()
def fax() -> None:
    """Fax drop folders: ingest now, and the review queue."""


@fax.command("ingest")
def fax_ingest() -> None:
    """Take every complete fax from the drop folders now (the worker does it periodically)."""
    from .faxes import ingest_now

    counts = ingest_now(_services())
    click.echo(", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no new faxes")


@fax.command("review")
@click.option("--source", default=None)
def fax_review(source: str | None) -> None:
    """List faxes awaiting review and files in quarantine."""
    from .faxes import review_queue

    name, queue = review_queue(_services(), source)
    for item in queue.list():
        click.echo(f"{item.fax_id}  review  {item.pages}p  received {item.received_at}  "
                   f"candidates: {', '.join(item.candidates) or '-'}  ({'; '.join(item.reasons)})")
    for q in queue.quarantined():
        click.echo(f"{q.fax_id}  quarantine  {q.reason}: {q.detail}")


@fax.command("preview")
@click.argument("fax_id")
@click.option("--source", default=None)
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True)
def fax_preview(fax_id: str, source: str | None, out: Path) -> None:
    """Write a PNG of the fax's first page."""
    from connectors.fax_review import ReviewError

    from .faxes import review_queue

    _, queue = review_queue(_services(), source)
    try:
        out.write_bytes(queue.preview(fax_id).read_bytes())
    except ReviewError as exc:
        raise GatewayError(str(exc)) from None
    click.echo(f"preview written to {out}")


@fax.command("assign")
@click.argument("fax_id")
@click.argument("transfer_id")
@click.option("--source", default=None)
def fax_assign(fax_id: str, transfer_id: str, source: str | None) -> None:
    """Attach a fax awaiting review to an open transfer."""
    from .faxes import assign

    assign(_services(), source, fax_id, transfer_id, "cli", "operator")
    click.echo(f"fax {fax_id} assigned to transfer {transfer_id}")


@fax.command("reject")
@click.argument("fax_id")
@click.option("--reason", required=True)
@click.option("--source", default=None)
def fax_reject(fax_id: str, reason: str, source: str | None) -> None:
    """Set a fax aside for good."""
    from .faxes import reject

    reject(_services(), source, fax_id, reason, "cli", "operator")
    click.echo(f"fax {fax_id} rejected")


# --- audit ---------------------------------------------------------------------------
from .audit.cli import audit as audit_group  # noqa: E402  (`audit verify` needs no database)

main.add_command(audit_group)


@audit_group.command("checkpoint")
def audit_checkpoint() -> None:
    """Sign a checkpoint of the log now (the worker also does it periodically)."""
    from .auditing import checkpoint_now

    cp = checkpoint_now(_services(), actor="cli")
    if cp is None:
        raise GatewayError("the audit log is empty; nothing to checkpoint")
    _out(cp)


@audit_group.command("export")
@click.option("--out", type=click.File("w"), default="-", help="File to write (default stdout).")
@click.option("--fhir", is_flag=True, help="FHIR AuditEvents instead of log entries.")
@click.option("--transfer", default=None)
@click.option("--authorization", default=None)
def audit_export(out, fhir: bool, transfer: str | None, authorization: str | None) -> None:
    """Export events with inclusion proofs as NDJSON, for `audit verify`."""
    from .audit import export
    from .auditing import identity

    svc = _services()
    filters = {k: v for k, v in {"transfer_id": transfer, "authorization_id": authorization}.items() if v}
    with svc.db.session() as s:
        n = export.write_ndjson(s, out, fhir=fhir, me=identity(svc), **filters)
    click.echo(f"{n} event(s) exported", err=True)


@audit_group.command("checkpoints")
@click.option("--out", type=click.File("w"), default="-")
def audit_checkpoints(out) -> None:
    """Write the checkpoint document (checkpoints, consistency proofs, public keys)."""
    from .audit import checkpoints

    svc = _services()
    with svc.db.session() as s:
        doc = checkpoints.checkpoints_document(s, jwks=svc.keys.jwks())
    json.dump(doc, out, indent=1)
    click.echo(f"{len(doc['checkpoints'])} checkpoint(s)", err=True)


@main.command()
@click.option("--keep", is_flag=True, help="Keep the temporary data dir and print its path.")
def demo(keep: bool) -> None:
    """Run a whole transfer on this machine: two gateways, a signed authorization, PDFs."""
    from .demo import run_demo

    run_demo(keep=keep)


if __name__ == "__main__":  # pragma: no cover
    main()
