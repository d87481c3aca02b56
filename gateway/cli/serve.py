"""`records-gateway serve` and `records-gateway worker`: the long-running processes."""
from __future__ import annotations

import logging
import os
import threading

import click

from .common import services, set_up_logging

log = logging.getLogger("gateway")
EMBEDDED_THREADS = 4  # the embedded worker's task threads
# How long a thread holds the GIL while others wait (Python's default: 5 ms). A C-MOVE
# goes one instance at a time: the PACS waits for each C-STORE's answer, which the
# Storage SCP's threads give only once they get the GIL, so a thread mapping records
# beside it slows the study down (4.6 s at 5 ms, 2.2 s at 0.5 ms, 1.5-1.7 s alone, on one
# 2-core machine). Handing the GIL over that often costs CPU too: on another 2-core
# machine the embedded standard case (bench/e2e.py, runs vary widely there) took a median
# 8.3 s (5.9-9.1 s, 5 runs) at 0.5 ms, 6.6 s (2 runs) at 5 ms, 6.4 s (5.4-9.9 s, 4 runs)
# at 2 ms.
SWITCH_INTERVAL_S = 0.002


@click.command()
@click.option("--receive", is_flag=True, help="Receive mode only (a second-opinion center).")
@click.option("--host", default=None)
@click.option("--port", type=int, default=None)
@click.option("--no-worker", is_flag=True, help="Do not run the embedded worker.")
def serve(receive: bool, host: str | None, port: int | None, no_worker: bool) -> None:
    """Serve the API; on the embedded default also run a worker in this process."""
    from werkzeug.serving import make_server

    from gateway import create_app

    overrides = {k: v for k, v in {"mode": "receive" if receive else None, "host": host,
                                   "port": port}.items() if v is not None}
    from gateway.config import load_settings

    set_up_logging(settings=load_settings(overrides))  # before the app logs anything
    app = create_app(overrides)
    svc = app.extensions["gateway"]
    _audit_configuration(svc, "serve")
    embedded = svc.settings.redis_url is None and svc.settings.mode != "receive" and not no_worker
    if svc.settings.warm_up_fhir_models and (embedded or svc.settings.mode == "receive"):
        from gateway.runtime.warmup import fhir_models  # it maps, or checks bundles it receives

        # the schema check's validators too: a receiver checks bundles with them first
        fhir_models(schema_check=True)
    tls = svc.settings.server_tls()
    server = make_server(svc.settings.host, svc.settings.port, app, threaded=True, ssl_context=tls,
                         request_handler=_path_only_access_log())
    log.info("serving %s mode on %s://%s:%d", svc.settings.mode, "https" if tls else "http",
             svc.settings.host, server.server_port)
    if not embedded:
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        return
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    try:
        # threads mostly wait (on a PACS, a FHIR server, a fax): with 2, a fax's short
        # pull waited behind the long FHIR and DICOM pulls of the same transfer
        _run_worker(svc, concurrency=EMBEDDED_THREADS, beat=True, pool="threads")
    finally:
        server.shutdown()


def _path_only_access_log():
    """Access log lines name the method and path, never the query string (an auditor's
    `?patient=system|value` names the patient), as deploy/gunicorn.conf.py's format does."""
    from werkzeug.serving import WSGIRequestHandler

    class PathOnly(WSGIRequestHandler):
        def log_request(self, code="-", size="-") -> None:
            path = getattr(self, "path", "").split("?", 1)[0]
            self.log("info", '"%s %s" %s %s', getattr(self, "command", "-"), path, code, size)

    return PathOnly


@click.command()
@click.option("--concurrency", type=int, default=2, show_default=True)
@click.option("--beat/--no-beat", default=False,
              help="Also run the periodic reconciler (run it in exactly one worker).")
@click.option("--pool", type=click.Choice(["prefork", "threads", "solo"]), default="threads",
              show_default=True)
def worker(concurrency: int, beat: bool, pool: str) -> None:
    """Run a Celery worker for transfer steps (Redis or the embedded broker)."""
    from gateway.runtime.warmup import fhir_models

    svc = services()
    _audit_configuration(svc, "worker")
    if svc.settings.warm_up_fhir_models:
        fhir_models(schema_check=True)  # before the first task: no transfer waits for them
    _run_worker(svc, concurrency, beat, pool)


def _audit_configuration(svc, process: str) -> None:
    """Log which configuration a serving process runs with: a hash of the settings (secrets
    left out), so a change of configuration is on the audit log."""
    import hashlib

    from gateway import audit

    text = svc.settings.model_dump_json(exclude={"blob_key"})
    with svc.db.session() as s:
        audit.record(s, "admin.configuration.loaded", actor=process, role="admin",
                     settings_sha256=hashlib.sha256(text.encode()).hexdigest(),
                     organization=svc.settings.organization, mode=svc.settings.mode)


def _run_worker(svc, concurrency: int, beat: bool, pool: str | None) -> None:
    import sys

    from gateway.runtime.celery_app import celery

    sys.setswitchinterval(SWITCH_INTERVAL_S)
    if svc.settings.sources:  # before the first task, as the models: its tasks read documents
        from gateway.runtime.warmup import connector_modules, document_sandbox

        connector_modules(source.kind for source in svc.settings.sources.values())
        if pool == "prefork":  # a sandbox serves the process that started it: each child's own
            from celery.signals import worker_process_init

            worker_process_init.connect(lambda **_: document_sandbox(), weak=False)
        else:
            document_sandbox()

    options = {"concurrency": concurrency, "beat": beat,
               "loglevel": svc.settings.log_level, "hostname": f"gateway@{os.uname().nodename}-{os.getpid()}",
               "without_mingle": True, "without_gossip": True, "quiet": True}
    if pool:
        options["pool"] = pool
    stop = threading.Event()
    if beat:
        options["schedule_filename"] = str(svc.settings.data_dir / "beat-schedule")
        from gateway.engine.faxes import start_watchers
        from gateway.engine.transfers import reconcile_now

        reconcile_now(svc)  # steps a killed worker held go on now, not at the first beat

        start_watchers(svc, stop)  # one watcher per fax folder, beside the one reconciler
    worker = celery.Worker(**options)
    try:
        worker.start()
    finally:
        stop.set()
    if worker.exitcode:
        raise SystemExit(worker.exitcode)
