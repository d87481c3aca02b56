"""What every page group shares: its blueprint (templates, HTML errors), rendering with
the navigation of the signed-in role, and the security headers of every page."""
from __future__ import annotations

from dataclasses import dataclass

from flask import Blueprint, current_app, g, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from gateway.errors import GatewayError

PREFIX = "/ui"  # every page and asset lives under it (the API never does)

# No inline script or style anywhere: scripts and styles come from /ui/static only.
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")


@dataclass(frozen=True)
class NavLink:
    endpoint: str
    label: str
    roles: tuple[str, ...]


NAV: list[NavLink] = []  # the top navigation, in order; each page group adds its own


def nav_link(endpoint: str, label: str, *roles: str) -> None:
    """Show a link to `endpoint` in the top navigation to the given roles."""
    if all(link.endpoint != endpoint for link in NAV):
        NAV.append(NavLink(endpoint, label, roles))


def blueprint(name: str, url_prefix: str = "") -> Blueprint:
    """A page group's blueprint: under PREFIX, templates from gateway/web/templates, and
    our errors shown as an HTML page (the API answers OperationOutcome JSON instead)."""
    bp = Blueprint(name, __name__, url_prefix=PREFIX + url_prefix, template_folder="templates")

    @bp.errorhandler(GatewayError)
    def _gateway_error(exc: GatewayError):
        return refuse(exc.http_status, exc.message)

    @bp.errorhandler(HTTPException)
    def _http_error(exc: HTTPException):
        return refuse(exc.code or 500, exc.description or exc.name)

    return bp


def render(template: str, **context):
    """Render a page with what the base template needs (navigation, form token)."""
    role = g.get("role")
    links = [(url_for(link.endpoint), link.label, request.endpoint == link.endpoint)
             for link in NAV if role in link.roles
             and link.endpoint in current_app.view_functions]  # this mode's pages only
    return render_template(template, nav=links, signed_in=role is not None, actor=g.get("actor"),
                           role=role, csrf_token=g.get("csrf_token", ""), **context)


# what an action did, shown on the page it leads back to (named by ?done=, never data)
NOTICES = {"retried": "Transfer retried.", "cancelled": "Transfer cancelled.",
           "replayed": "Delivery replayed.", "approved": "Case approved: its sources start now.",
           "no-records": "Recorded: the source has no records.",
           "revoked": "Authorization revoked; its transfers in flight were stopped.",
           "assigned": "Fax assigned to the transfer.", "rejected": "Fax rejected.",
           "notification-replayed": "Notification queued to be sent again."}


def notice() -> str | None:
    return NOTICES.get(request.args.get("done", ""))


def refuse(status: int, message: str):
    """An error page with `status` (403, 404, 409, ...)."""
    return render("error.html", status=status, message=message), status


def security_headers(response):
    """Headers for every page and asset (after_request; the API's hook adds no-store)."""
    if request.path == PREFIX or request.path.startswith(PREFIX + "/"):
        # a response that set its own (a document shown in a sandboxed frame) keeps it
        response.headers.setdefault("Content-Security-Policy", CSP)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers["Referrer-Policy"] = "no-referrer"
        response.headers["Cache-Control"] = "no-store"
    return response
