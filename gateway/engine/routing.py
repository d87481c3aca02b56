"""Routing rules: which configured sources and which peer an authorization names.

A discloser is routed to every configured source whose organization is the discloser's
id and whose endpoint is one of the discloser's endpoints; the recipient to the one
configured peer whose organization and base URL are the recipient's. Whatever matches
nothing (or, for the recipient, more than one peer) is reported with the reason, so an
operator sees why a case cannot start.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from gateway.config import Settings
from gateway.errors import AuthorizationDenied
from gateway.storage.models import Authorization

from . import policy


@dataclass(frozen=True)
class RoutedSource:
    name: str  # configured source
    discloser: str  # the authorization's discloser id
    auto: str  # start | review | off


@dataclass
class Route:
    sources: list[RoutedSource] = field(default_factory=list)
    recipient: str | None = None  # configured peer
    unrouted: list[dict] = field(default_factory=list)  # {"party", "id", "reason"}


def route(settings: Settings, auth: Authorization) -> Route:
    result = Route()
    for discloser in auth.claims.get("disclosers", []):
        matched = []
        for name, src in sorted(settings.sources.items()):
            if src.organization != discloser["id"]:
                continue
            try:
                policy.covers_source(auth, src)
            except AuthorizationDenied:
                continue
            matched.append(RoutedSource(name, discloser["id"], src.auto))
        if not matched:
            kinds = ", ".join(sorted({e["type"] for e in discloser.get("endpoints", [])}))
            result.unrouted.append({
                "party": "discloser", "id": discloser["id"],
                "reason": f"no configured source has organization {discloser['id']!r} and one "
                          f"of its endpoints ({kinds}) in the authorization"})
        result.sources.extend(matched)
    recipient = auth.claims.get("recipient", {})
    peers = []
    for name, peer in sorted(settings.peers.items()):
        try:
            policy.covers_recipient(auth, peer)
        except AuthorizationDenied:
            continue
        peers.append(name)
    if len(peers) == 1:
        result.recipient = peers[0]
    else:
        reason = (f"several configured peers match ({', '.join(peers)})" if peers else
                  f"no configured peer has organization {recipient.get('id')!r} and the "
                  "recipient's endpoint")
        result.unrouted.append({"party": "recipient", "id": recipient.get("id"), "reason": reason})
    return result
