"""Bearer-token authentication and role checks for every endpoint."""
from __future__ import annotations

from functools import wraps

from flask import current_app, g, request

from gateway.errors import Forbidden, Unauthenticated
from gateway.runtime.services import Services
from gateway.trust.tokens import authenticate


def svc() -> Services:
    return current_app.extensions["gateway"]


def require(*roles: str):
    """Let the request through only with a valid token of one of `roles`."""

    def decorate(view):
        @wraps(view)
        def wrapper(*args, **kwargs):
            header = request.headers.get("Authorization", "")
            scheme, _, presented = header.partition(" ")
            if scheme.lower() != "bearer" or not presented.strip():
                raise Unauthenticated("missing bearer token (Authorization: Bearer <token>)")
            with svc().db.session() as s:
                token = authenticate(s, presented.strip())
            if token.role not in roles:
                raise Forbidden(f"role {token.role!r} may not do this; needs {' or '.join(roles)}")
            g.actor, g.role = token.name, token.role
            g.organization = token.organization
            return view(*args, **kwargs)

        wrapper.roles = roles  # read by the OpenAPI document
        return wrapper

    return decorate


def json_body(required: bool = True) -> dict:
    """The request's JSON object ({} for no body when not `required`), with no NUL in it."""
    from gateway.errors import InvalidInput

    from .params import refuse_nul

    data = request.get_json(silent=True)
    if data is None and not required and not request.get_data(cache=True):
        return {}
    if not isinstance(data, dict):
        raise InvalidInput("request body must be a JSON object")
    refuse_nul(data, "the request body")
    return data
