"""Limits on failed sign-ins, counted in the database (table sign_in_failures) so every
process and host of a deployment counts together: gunicorn workers, several API hosts.

Failures are counted per account name presented (whether or not such a person exists,
so the answer tells nothing about that) and per client address, so one address cannot
try many names and many addresses cannot wear down one name. Past a limit within the
window (settings `web.sign_in`), every sign-in of that name or from that address is
refused, the right password included, until the lockout ends; each lockout in a row
lasts twice as long as the one before, up to the longest. A successful sign-in clears
its name's count; the address keeps its own (one good account must not wash out an
address's guesses at others). Names and addresses are kept only as sha256 digests.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta

from flask import request
from sqlalchemy import and_, delete, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from gateway import audit
from gateway.config import SignInLimits
from gateway.storage.models import SignInFailures

NAME, ADDRESS = "name", "address"


@dataclass(frozen=True)
class Lockout:
    """A lockout that started with this failure: which kind of key, how long, until when."""
    scope: str
    seconds: float
    until: datetime
    failures: int


def client_address(limits: SignInLimits) -> str:
    """The client's address: the connection's, or where `trusted_proxies` reverse proxies
    stand in front, the address the outermost of them saw (the Nth entry from the right of
    X-Forwarded-For; entries further left are the client's own claims)."""
    if limits.trusted_proxies:
        hops = [a.strip() for a in request.headers.get("X-Forwarded-For", "").split(",")]
        hops = [a for a in hops if a]
        if len(hops) >= limits.trusted_proxies:
            return hops[-limits.trusted_proxies][:64]
    return request.remote_addr or "unknown"


def keys(name: str | None, address: str) -> list[tuple[str, str]]:
    """(scope, sha256) of the address and, when one was given, the name (case folded: a
    name typed in other capitals is the same guess), in one fixed order for every process
    (row locks taken in the same order cannot deadlock)."""
    found = [(ADDRESS, address)] + ([(NAME, name.strip().casefold())] if name else [])
    return sorted((scope, hashlib.sha256(f"{scope}|{value}".encode()).hexdigest())
                  for scope, value in found)


def _matching(key_list: list[tuple[str, str]]):
    return or_(*(and_(SignInFailures.scope == scope, SignInFailures.key_sha256 == key)
                 for scope, key in key_list))


def locked_until(s: Session, key_list: list[tuple[str, str]], now: datetime) -> datetime | None:
    """The end of the latest lockout in force for any of these keys, or None."""
    ends = [row.locked_until for row in s.scalars(select(SignInFailures)
                                                 .where(_matching(key_list)))
            if row.locked_until is not None and row.locked_until > now]
    return max(ends, default=None)


def _insert(s: Session):
    return (postgresql.insert if s.get_bind().dialect.name == "postgresql" else sqlite.insert)(
        SignInFailures)


def record_failure(s: Session, key_list: list[tuple[str, str]], limits: SignInLimits,
                   now: datetime, *, actor: str, address: str) -> Lockout | None:
    """Count one failed sign-in against each key, in the caller's transaction (each row
    locked while it changes). Returns the longest lockout this failure started, if any,
    and records each in the audit log."""
    started: list[Lockout] = []
    for scope, key in key_list:
        s.execute(_insert(s).values(scope=scope, key_sha256=key, failures=0,
                                    window_started_at=now, lockouts=0, last_failure_at=now)
                  .on_conflict_do_nothing())
        row = s.scalars(select(SignInFailures)
                        .where(SignInFailures.scope == scope, SignInFailures.key_sha256 == key)
                        .with_for_update().execution_options(populate_existing=True)).one()
        if now - row.last_failure_at > timedelta(seconds=limits.forget_after_s):
            row.lockouts = 0  # quiet for long enough: the next lockout is the first again
        if now - row.window_started_at > timedelta(seconds=limits.window_s):
            row.failures, row.window_started_at = 0, now
        row.failures += 1
        row.last_failure_at = now
        limit = limits.max_failures_per_name if scope == NAME else limits.max_failures_per_address
        if row.failures >= limit:
            seconds = min(limits.lockout_s * 2 ** min(row.lockouts, 32), limits.max_lockout_s)
            started.append(Lockout(scope, seconds, now + timedelta(seconds=seconds),
                                   row.failures))
            row.lockouts += 1
            row.locked_until = started[-1].until
            row.failures, row.window_started_at = 0, now
    for lock in started:  # no patient data: who tried, which kind of key, for how long
        audit.record(s, "web.sign_in.locked", actor=actor, outcome="failure", scope=lock.scope,
                     failures=lock.failures, lockout_s=lock.seconds,
                     until=lock.until.isoformat(timespec="seconds"),
                     **({"address": address} if lock.scope == ADDRESS else {}))
    return max(started, key=lambda lock: lock.until, default=None)


def clear_name(s: Session, name: str, address: str) -> None:
    """A successful sign-in: its name's failures and lockout streak are forgotten."""
    s.execute(delete(SignInFailures).where(
        _matching([k for k in keys(name, address) if k[0] == NAME])))


def forget_old(s: Session, limits: SignInLimits, now: datetime) -> None:
    """Drop counts with no failure for `forget_after_s` and no lockout in force (they would
    start from nothing anyway). Its own transaction: it must not hold row locks another
    sign-in waits for."""
    s.execute(delete(SignInFailures).where(
        SignInFailures.last_failure_at < now - timedelta(seconds=limits.forget_after_s),
        or_(SignInFailures.locked_until.is_(None), SignInFailures.locked_until <= now)))
