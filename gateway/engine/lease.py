"""Leases on the transfer row: one worker at a time runs a transfer's step; and on each
transfer source's row: one worker at a time pulls that source.

A step claims the row for `step_lease_s`; a duplicate message, or the reconciler's
re-enqueue, then finds it claimed or moved on and does nothing. A long step renews its
claim as it goes, and each renewal re-checks the authorization, so a revocation stops a
pull between two records. A worker killed mid-step leaves a lease that expires, or,
on the same host, that the reconciler takes back at once: a claim names its process
(host name and PID) and a PID that no longer exists holds nothing. (Hosts sharing one
database need distinct host names, as containers and machines have by default.)
"""
from __future__ import annotations

import contextlib
import os
import random
import socket
import threading
import time
import uuid
from datetime import timedelta

from sqlalchemy import or_, select, update

from gateway.config import RetryConfig
from gateway.runtime.services import Services
from gateway.storage.models import Transfer, TransferSource, utcnow

from . import policy

RENEW_EVERY_S = 2.0
HOST = socket.gethostname()[:32]


def new_owner() -> str:
    """A claim's owner: this process (host, PID) and the one step it runs."""
    return f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:16]}"


def held_by_dead(owner: str | None) -> bool:
    """Whether the claim's process is gone: only decidable on its own host."""
    host, _, rest = (owner or "").partition(":")
    pid = rest.partition(":")[0]
    if host != HOST or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # alive, another user's
        return False
    return False


def claim(svc: Services, transfer_id: str, state: str, owner: str) -> bool:
    """Take the step for this worker, unless another holds it or the state moved on."""
    now = utcnow()
    with svc.db.session() as s:
        result = s.execute(
            update(Transfer)
            .where(Transfer.id == transfer_id, Transfer.state == state,
                   or_(Transfer.lease_until.is_(None), Transfer.lease_until < now),
                   or_(Transfer.next_attempt_at.is_(None), Transfer.next_attempt_at <= now))
            .values(lease_owner=owner,
                    lease_until=now + timedelta(seconds=svc.settings.step_lease_s))
            .execution_options(synchronize_session=False))
        return result.rowcount == 1


def claim_source(svc: Services, transfer_id: str, source: str, owner: str) -> bool:
    """Take one source's pull for this worker: the transfer is pulling, the source is not
    finished, nobody holds it and its next attempt is due."""
    now = utcnow()
    pulling = select(Transfer.id).where(Transfer.id == transfer_id, Transfer.state == "pulling")
    with svc.db.session() as s:
        result = s.execute(
            update(TransferSource)
            .where(TransferSource.transfer_id == transfer_id, TransferSource.name == source,
                   TransferSource.state.not_in(("done", "failed")),
                   TransferSource.transfer_id.in_(pulling.scalar_subquery()),
                   or_(TransferSource.lease_until.is_(None), TransferSource.lease_until < now),
                   or_(TransferSource.next_attempt_at.is_(None), TransferSource.next_attempt_at <= now))
            # next_attempt_at = now: a wake while this pull runs clears it (faxes.wake), and
            # the pull, should it still find nothing, tries again at once (pulls._failed)
            .values(lease_owner=owner, next_attempt_at=now,
                    lease_until=now + timedelta(seconds=svc.settings.step_lease_s))
            .execution_options(synchronize_session=False))
        return result.rowcount == 1


def renew_source_lease(svc: Services, transfer_id: str, source: str, owner: str) -> None:
    """Keep a source pull's claim; stop it once the transfer is no longer pulling
    (cancelled, revoked, failed) or the claim was taken over."""
    with svc.db.session() as s:
        row = s.scalars(select(TransferSource).filter_by(transfer_id=transfer_id, name=source)).one()
        if row.lease_owner != owner or row.transfer.state != "pulling":
            raise Superseded()
        policy.check_active(row.transfer.authorization)
        row.lease_until = utcnow() + timedelta(seconds=svc.settings.step_lease_s)


def backoff(retry: RetryConfig, attempts: int) -> float:
    """Seconds before the next attempt: doubling, capped, with jitter spreading the
    retries of many transfers."""
    delay = min(retry.max_delay_s, retry.base_delay_s * (2 ** min(attempts, 30)))
    return delay * random.uniform(0.5, 1.0)


def renew_lease(svc: Services, transfer_id: str, owner: str) -> None:
    """Keep a long step's claim and stop it at once if the transfer was cancelled."""
    with svc.db.session() as s:
        t = s.get(Transfer, transfer_id)
        if t.lease_owner != owner:  # cancelled, revoked, or the lease expired and was taken
            raise Superseded()
        policy.check_active(t.authorization)
        t.lease_until = utcnow() + timedelta(seconds=svc.settings.step_lease_s)


class Superseded(Exception):
    """Our lease was lost (expired and taken): stop quietly, the new owner goes on."""


class Lease:
    """Renews a long step's claim every few seconds; renewing also re-checks the
    authorization, so a revocation stops a pull between two records."""

    def __init__(self, svc: Services, transfer_id: str, owner: str, source: str | None = None):
        self.svc, self.transfer_id, self.owner, self.source = svc, transfer_id, owner, source
        self.last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= RENEW_EVERY_S

    def renew_if_due(self) -> None:
        if self.due():
            self.renew()

    def renew(self) -> None:
        """Renew now: before records leave, so one revoked or expired in the step's
        course stops the next bundle, not only the next step."""
        self._claim()
        self.last = time.monotonic()

    def _claim(self) -> None:
        if self.source is None:
            renew_lease(self.svc, self.transfer_id, self.owner)
        else:  # a source's own pull (gateway/engine/pulls.py)
            renew_source_lease(self.svc, self.transfer_id, self.source, self.owner)

    @contextlib.contextmanager
    def held_while_blocked(self):
        """Renew the claim from a thread while one blocking call runs (a recipient slow
        to take a bundle, or slow to answer): a lease marks a dead worker, not a slow
        peer. A lost lease or a revoked authorization is raised once the call returns."""
        stop, lost = threading.Event(), []

        def beat() -> None:
            while not stop.wait(RENEW_EVERY_S):
                try:
                    self._claim()
                except BaseException as exc:  # noqa: BLE001 - handed to the step below
                    lost.append(exc)
                    return

        thread = threading.Thread(target=beat, daemon=True, name="lease-heartbeat")
        thread.start()
        try:
            yield
        finally:
            stop.set()
            thread.join()
            self.last = time.monotonic()
        if lost:
            raise lost[0]
