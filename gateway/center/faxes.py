"""Faxed replies to the center's requests: the fax-drop connector (claiming, sandboxed
parsing, cover-code and text matching, the on-disk store) run over the folder named by
`center.fax_replies`, with the open fax providers as what a fax may answer. A fax whose
cover sheet names a provider's row answers it (progress.take_fax); one that matches
nothing waits in that folder's review queue, as on the sending side."""
from __future__ import annotations

import logging
from datetime import date

from sqlalchemy import select

from connectors import connector_class
from connectors.fax.match import TransferDescriptor
from connectors.fax.store import StoreBusy
from gateway.engine.faxes import ensure_cover_key
from gateway.runtime.services import Services
from gateway.storage.models import CenterProvider, CenterRequest

from . import progress
from .requests import reference

log = logging.getLogger(__name__)
_ingestors: dict[str, object] = {}  # per process: an ingestor remembers files settling
NAME = "center-fax-replies"


def waiting(svc: Services) -> list[TransferDescriptor]:
    """Fax providers of open requests that have not answered yet."""
    with svc.db.session() as s:
        rows = s.execute(select(CenterProvider, CenterRequest).join(CenterRequest).where(
            CenterRequest.state == "open", CenterProvider.kind == "fax",
            CenterProvider.status.in_(("sent", "acknowledged", "overdue", "receiving")))).all()
        return [TransferDescriptor(p.id, r.patient["name"], date.fromisoformat(r.patient["birthDate"]),
                                   reference(r.id), svc.settings.center.return_fax)
                for p, r in rows]


def _ingestor(svc: Services):
    ingestor = _ingestors.get(svc.settings.data_dir.as_posix())
    if ingestor is None:
        options = dict(svc.settings.center.fax_replies)
        options["cover_key_file"] = str(ensure_cover_key(svc.settings.keys_dir))
        conn = connector_class("fax-drop")(NAME, options, svc.settings.work_dir / "center-fax")
        conn.check()
        ingestor = conn.ingestor(lambda: waiting(svc),
                                 settle_seconds=float(options.get("file_settle_seconds", 2.0)))
        _ingestors[svc.settings.data_dir.as_posix()] = ingestor
    return ingestor


def scan(svc: Services) -> int:
    """One pass over the replies folder; how many faxes answered a request."""
    if svc.settings.center is None or not svc.settings.center.fax_replies:
        return 0
    try:
        outcomes = _ingestor(svc).scan_once()
    except StoreBusy:
        return 0  # another worker is ingesting the folder right now
    answered = 0
    for outcome in outcomes:
        if outcome.state != "matched" or not outcome.transfer_id:
            log.info("center fax %s: %s", outcome.fax_id, outcome.state)
            continue
        with svc.db.session() as s:
            answered += progress.take_fax(s, outcome.transfer_id, outcome.fax_id, None)
    return answered
