"""The web pages: server-rendered (Jinja templates in templates/, scripts and styles from
static/, nothing from elsewhere), behind the same tokens and roles as the API.

One module a page group, each with its blueprint from `pages.blueprint`: signin.py
(sign-in and out, home), operators.py (the sending side's cases and transfers), ...
session.py holds the sessions, the `page` decorator (sign-in, roles, CSRF) and the audit
of page views; docs/web.md says how to add a page. A face, like the API: it may import
any room below it (engine, trust, audit, storage, ...); only the app factory's
registration (gateway/api/__init__.py) imports it."""
from __future__ import annotations

from flask import Blueprint, Flask, redirect

from .pages import PREFIX, security_headers

assets = Blueprint("web_assets", __name__, url_prefix=PREFIX, static_folder="static",
                   static_url_path="/static")


def register(app: Flask, mode: str) -> None:
    """Every page group of this gateway's `mode` (send, receive, both)."""
    from . import authorizations, dead_letters, faxes, operator_actions, operators, signin  # noqa: F401

    app.register_blueprint(assets)
    app.register_blueprint(signin.bp)
    if mode in ("send", "both"):
        app.register_blueprint(operators.bp)  # with operator_actions' routes
        for group in (faxes, authorizations, dead_letters):
            app.register_blueprint(group.bp)
    if mode in ("receive", "both"):
        from . import center

        app.register_blueprint(center.bp)
    if mode in ("receive", "both") and app.extensions["gateway"].settings.center is not None:
        from . import requests  # the center's request form and the patient's status page

        app.register_blueprint(requests.bp)
        app.register_blueprint(requests.patient_bp)
    from . import auditors

    app.register_blueprint(auditors.bp)
    # the old single-page dashboard's address leads to the pages that replaced it
    app.add_url_rule("/dashboard", "web_dashboard", lambda: redirect(PREFIX + "/", code=301))
    app.after_request(security_headers)


def is_page(path: str) -> bool:
    """A page or asset (not an API operation): left out of the OpenAPI document."""
    return path in (PREFIX, "/dashboard") or path.startswith(PREFIX + "/")
