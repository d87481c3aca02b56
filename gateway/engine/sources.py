"""Connector options as configured, plus what the gateway holds for them (keys kept in
its data dir, never in the configuration file, and the blob store DICOM instances are
received into).

DICOM sources: C-MOVE needs our Storage SCP. It runs inside the worker process that runs
the pull step, on `scp_port` (`scp_host`, default 127.0.0.1: set the interface the PACS
reaches; AE title `scp_aet`, default `calling_aet`), from the first C-MOVE of a pull to
its end, shared by the pulls of that process. The PACS must know that AE title, host and
port as a move destination. The SCP takes associations only from the sources being
pulled (their AE title and address: `sender_aet`, `sender_hosts`, default `ae_title`,
`host`; see docs/dicom.md); each refused association is audited
("dicom.association.refused", at most once a minute per address, with the count).
A second worker process on the same host pulling at the same time cannot listen on the
port: its pull is retried later (ProviderUnavailable). Without `scp_port` the connector
retrieves by C-GET (no inbound port), or by WADO-RS where `dicomweb_url` is set.

With the standing receiver configured (`dicom_receiver`, gateway.engine.dicom_receiver),
a source whose options say `retrieve = "receiver"` (or every DIMSE source, with
`dicom_receiver.all_sources`) sends its C-MOVEs to the receiver's AE title instead, from
whichever worker runs the pull, and reads what arrived from the database
(gateway.engine.dicom_moves): the worker needs no port."""
from __future__ import annotations

import functools

from gateway import audit
from gateway.config import Settings, SourceConfig
from gateway.runtime.services import Services


def uses_receiver(settings: Settings, source: SourceConfig) -> bool:
    """Whether `source` retrieves by C-MOVE to the standing DICOM receiver."""
    if source.kind != "dicom" or settings.dicom_receiver is None:
        return False
    retrieve = source.options.get("retrieve", "auto")
    if retrieve == "receiver":
        return True
    return settings.dicom_receiver.all_sources and retrieve in ("auto", "move") and not (
        retrieve == "auto" and source.options.get("dicomweb_url"))


def connector_options(svc: Services, source: SourceConfig, name: str = "") -> dict:
    """The connector's options for `source` (named `name`: a pull's DICOM receiver
    records are kept per transfer and source)."""
    options = dict(source.options)
    if uses_receiver(svc.settings, source):
        from .dicom_moves import MoveBoard

        conf = svc.settings.dicom_receiver
        options.update(retrieve="move", scp_aet=conf.ae_title,
                       moves=MoveBoard(svc, name, conf))
        options.pop("scp_port", None)
    if source.kind == "fax-drop":
        options.setdefault("cover_key_file", str(svc.settings.keys_dir / "fax-cover.key"))
    if source.kind in ("dicom", "dicomweb"):
        from .dicom_sink import BlobStoreSink

        options["sink"] = BlobStoreSink(svc.blobs)  # received once, encrypted, hashed
        options["on_refused"] = functools.partial(audit_refused, svc)
    if source.kind == "fhir-rest":
        auth = dict(options.get("auth") or {})
        if auth.get("type") == "smart-backend" and not (auth.get("private_key") or
                                                          auth.get("private_key_file")):
            # the gateway's own SMART client key, published in /.well-known/jwks.json
            from gateway.trust.keys import ClientKeys

            keys = ClientKeys(svc.settings.keys_dir)
            auth["private_key_file"] = str(keys.path)
            auth.setdefault("kid", keys.kid())
            options["auth"] = auth
    return options


def audit_refused(svc: Services, calling_ae: str, address: str, refused: int) -> None:
    """An association our Storage SCP refused (not a configured source): audited."""
    with svc.db.session() as s:
        audit.record(s, "dicom.association.refused", actor="dicom-scp", outcome="deny",
                     calling_ae=calling_ae, address=address, refused=refused)
