"""The periodic job that runs cases by themselves: the intake folder first, then one
pass over every case not closed (cases.advance). Run by the worker that runs the
periodic jobs (`worker --beat`), every `case_tick_s`; `tick_now` does one pass (tests,
`case tick` on the command line)."""
from __future__ import annotations

import logging

from sqlalchemy import select

from gateway.errors import GatewayError
from gateway.runtime.celery_app import celery
from gateway.runtime.services import Services, services
from gateway.storage.models import Case

from . import intake, operations

log = logging.getLogger(__name__)


def tick_now(svc: Services) -> dict[str, int]:
    counts = intake.scan_once(svc)
    with svc.db.session() as s:
        ids = s.scalars(select(Case.id).where(Case.state != "closed")).all()
    for case_id in ids:
        try:
            operations.advance_case(svc, case_id)
        except GatewayError as exc:  # one case's trouble never stops the others
            log.warning("case %s: %s: %s", case_id, type(exc).__name__, exc)
    counts["cases"] = len(ids)
    return counts


@celery.task(name="gateway.cases.tick", ignore_result=True)
def tick() -> dict[str, int]:
    return tick_now(services())
