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


@celery.task(name="gateway.cases.advance", ignore_result=True)
def advance(case_id: str) -> None:
    """One pass over one case now (new records announced for it)."""
    try:
        operations.advance_case(services(), case_id)
    except GatewayError as exc:
        log.warning("case %s: %s: %s", case_id, type(exc).__name__, exc)


def advance_soon(svc: Services, case_id: str) -> None:
    """A case's sources announced new records: look again once they have settled (the
    settle window makes a burst one follow-up); the periodic pass is the fallback."""
    advance.apply_async((case_id,), countdown=svc.settings.follow_up_settle_s + 0.2)
