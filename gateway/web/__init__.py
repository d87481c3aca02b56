"""The operator dashboard: one static page that reads the API with the user's token
(kept in the browser tab's sessionStorage), so it carries no data and needs no session.
A face, like the API: it may import any room below it."""
from __future__ import annotations

from importlib import resources

from flask import Blueprint, Response

bp = Blueprint("web", __name__)


@bp.get("/dashboard")
def dashboard():
    page = resources.files(__package__).joinpath("dashboard.html").read_text()
    response = Response(page, mimetype="text/html")
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'unsafe-inline'; "
        "connect-src 'self'; frame-ancestors 'none'")
    return response
