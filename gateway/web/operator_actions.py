"""The operator pages' buttons: retry, cancel and replay a transfer; approve a case and
record that a source has no records. Each calls the same engine function as the API and
the command line (gateway/engine/operations.py), then goes back to the page it came from
with a notice."""
from __future__ import annotations

from flask import g, redirect, request, url_for

from gateway.engine.operations import (
    approve_case,
    cancel_transfer,
    mark_no_records,
    replay_transfer,
    retry_transfer,
)
from gateway.errors import InvalidInput

from .operators import OPERATORS, bp
from .session import page, svc


def _reason(required: bool) -> str:
    reason = request.form.get("reason", "").strip()
    if required and not reason:
        raise InvalidInput("say why (the reason field)")
    if len(reason) > 500:
        raise InvalidInput("a reason is at most 500 characters")
    return reason


def _back_to_transfer(transfer_id: str, done: str):
    return redirect(url_for("operators.transfer", transfer_id=transfer_id, done=done), code=303)


@bp.post("/transfers/<transfer_id>/retry")
@page(*OPERATORS)
def transfer_retry(transfer_id: str):
    retry_transfer(svc(), transfer_id, g.actor, g.role,
                   skip_failed_items=request.form.get("skip_failed_items") == "yes")
    return _back_to_transfer(transfer_id, "retried")


@bp.post("/transfers/<transfer_id>/cancel")
@page(*OPERATORS)
def transfer_cancel(transfer_id: str):
    cancel_transfer(svc(), transfer_id, _reason(False) or "cancelled by an operator",
                    g.actor, g.role)
    return _back_to_transfer(transfer_id, "cancelled")


@bp.post("/transfers/<transfer_id>/replay")
@page(*OPERATORS)
def transfer_replay(transfer_id: str):
    replay_transfer(svc(), transfer_id, g.actor, g.role)
    return _back_to_transfer(transfer_id, "replayed")


@bp.post("/cases/<case_id>/approve")
@page(*OPERATORS)
def case_approve(case_id: str):
    approve_case(svc(), case_id, actor=g.actor, role=g.role)
    return redirect(url_for("operators.case", case_id=case_id, done="approved"), code=303)


@bp.post("/cases/<case_id>/sources/<source>/no-records")
@page(*OPERATORS)
def case_no_records(case_id: str, source: str):
    mark_no_records(svc(), case_id, source, _reason(True), actor=g.actor, role=g.role)
    return redirect(url_for("operators.case", case_id=case_id, done="no-records"), code=303)
