"""Dead letters: deliveries whose retries ran out (replay or cancel each) and
notifications to people that failed for good (replay each). The same engine and outbox
functions as the API's."""
from __future__ import annotations

from flask import g, redirect, url_for
from sqlalchemy import select

from gateway.engine.operations import transfer_view
from gateway.notify.outbox import list_notifications, replay
from gateway.storage.models import Transfer

from .operators import OPERATORS
from .pages import blueprint, nav_link, notice, render
from .session import page, svc

bp = blueprint("dead_letters", "/operator/dead-letters")


@bp.get("/")
@page(*OPERATORS)
def index():
    with svc().db.session() as s:
        rows = s.scalars(select(Transfer).where(Transfer.state == "dead_letter")
                         .order_by(Transfer.updated_at.desc()).limit(200))
        parked = [transfer_view(s, t, completeness_report=False) for t in rows]
        dead = list_notifications(s, "dead", 200)
    return render("operators/dead_letters.html", transfers=parked, notifications=dead,
                  notice=notice())


@bp.post("/notifications/<notification_id>/replay")
@page(*OPERATORS)
def replay_notification(notification_id: str):
    with svc().db.session() as s:
        replay(s, notification_id, g.actor, g.role)
    return redirect(url_for("dead_letters.index", done="notification-replayed"), code=303)


nav_link("dead_letters.index", "Dead letters", *OPERATORS)
