"""`records-gateway dicom-receiver`: the standing DICOM receiver, a long-running process.

It listens on `dicom_receiver.host`/`port` as `dicom_receiver.ae_title` (the move
destination every PACS source is configured with) and takes the instances of the C-MOVEs
any worker has open (gateway.engine.dicom_receiver). With `health_port` it answers
`GET /health` (200 while it listens and the database and blob store answer, else 503
naming what failed). Every SWEEP_EVERY seconds it forgets what it took for transfers
settled long ago (gateway.engine.dicom_receiver.sweep). SIGTERM or SIGINT stops it
gracefully: no new association is taken, the instances received are stored and
recorded, then it exits 0.
"""
from __future__ import annotations

import functools
import json
import logging
import signal
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import click

from gateway.errors import ConfigError

from .common import services

log = logging.getLogger("gateway")


def receiver_peers(settings) -> dict:
    """The sources whose C-MOVEs come to the receiver: name -> SourcePeer (who may
    associate: the source's AE title from its addresses)."""
    from connectors.base import SourceUnavailable
    from connectors.dicom.backends import sender_peer
    from gateway.engine.sources import uses_receiver

    peers = {}
    for name, cfg in sorted(settings.sources.items()):
        if uses_receiver(settings, cfg):
            try:
                peers[name] = sender_peer(cfg.options)
            except KeyError as exc:
                raise ConfigError(f"source {name}: option {exc} is missing") from None
            except SourceUnavailable as exc:
                raise ConfigError(f"source {name}: {exc}") from None
    return peers


@click.command("dicom-receiver")
def dicom_receiver() -> None:
    """Run the standing DICOM receiver (the C-MOVE destination of every worker)."""
    from connectors.dicom.scp import StorageSCP
    from gateway.config import load_settings
    from gateway.engine.dicom_receiver import SWEEP_EVERY, ReceiverRouter
    from gateway.engine.sources import audit_refused

    settings = load_settings()
    conf = settings.dicom_receiver
    if conf is None:
        raise ConfigError("dicom_receiver is not configured (its ae_title, host and port: "
                          "see docs/dicom.md)")
    peers = receiver_peers(settings)
    if not peers:
        raise ConfigError("no DICOM source retrieves through the receiver: set a source's "
                          "options.retrieve = \"receiver\", or dicom_receiver.all_sources")
    svc = services()
    from .serve import _audit_configuration

    _audit_configuration(svc, "dicom-receiver")
    router = ReceiverRouter(svc, svc.settings.work_dir / "dicom-receiver")
    scp = StorageSCP(conf.ae_title, conf.port, conf.host, router=router)
    scp.on_refused = functools.partial(audit_refused, svc)
    for peer in peers.values():
        scp.admit(peer)
    try:
        scp.start()
    except OSError as exc:
        raise ConfigError(f"dicom_receiver cannot listen on {conf.host}:{conf.port}: "
                          f"{exc.strerror}") from None
    health = _health_server(svc, scp, conf) if conf.health_port else None
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    log.info("DICOM receiver %s listening on %s:%d for %d source(s)", conf.ae_title, conf.host,
             scp.port, len(peers))
    try:
        while not stop.wait(SWEEP_EVERY):
            try:
                router.sweep()
            except Exception:  # the database away for a while: the next sweep tries again
                log.exception("DICOM receiver sweep failed")
    finally:
        log.info("DICOM receiver stopping: storing what was received")
        if health is not None:
            health.shutdown()
        scp.stop()
        router.close()
        svc.close()


def _health_server(svc, scp, conf) -> ThreadingHTTPServer:
    """GET /health: 200 while the SCP listens and the database and blob store answer."""
    from gateway.runtime.health import check_blobs, check_database

    class Health(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - the http.server name
            if self.path.split("?", 1)[0] not in ("/health", "/ready"):
                self.send_error(404)
                return
            checks = [check_database(svc.db), check_blobs(svc.blobs)]
            listening = scp._server is not None
            failed = [c for c in checks if not c.ok]
            body = {"status": "ok" if listening and not failed else "unavailable",
                    "ae_title": conf.ae_title, "listening": listening,
                    "checks": {c.name: c.detail for c in checks}}
            data = json.dumps(body).encode()
            self.send_response(200 if body["status"] == "ok" else 503)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args) -> None:  # probes every few seconds: not logged
            pass

    try:
        server = ThreadingHTTPServer((conf.health_host, conf.health_port), Health)
    except OSError as exc:
        raise ConfigError(f"dicom_receiver.health_port {conf.health_port}: {exc.strerror}") from None
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="receiver-health", daemon=True).start()
    return server
