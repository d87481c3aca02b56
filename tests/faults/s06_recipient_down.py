"""Scenario 6: the recipient is down for longer than the retry window, so each delivery
is dead-lettered; the recipient comes back and an operator replays them: each is then
delivered exactly once."""
from __future__ import annotations

import time
from pathlib import Path

from .harness import TERMINAL, Cluster
from .result import ScenarioResult, scenario

TRANSFERS = 4


@scenario(6, "recipient down past the retry window: dead-lettered, then replayed")
def run(workdir: Path, transfers: int = TRANSFERS) -> ScenarioResult:
    retry = {"retry": {"base_delay_s": 0.1, "max_delay_s": 0.3, "max_attempts": 3}}
    with Cluster(workdir, workers=1, sender=retry) as c:
        c.kill(c.receiver)  # down before anything is sent
        auth = c.authorize()
        tids = [c.transfer(auth) for _ in range(transfers)]
        parked = c.wait_states(TERMINAL, 180)
        dead = [tid for tid in tids if c.view(tid)["state"] == "dead_letter"]
        c.start_receiver()
        at = time.monotonic()
        for tid in dead:
            c.replay(tid)
        states = c.wait_states({"completed", "failed", "cancelled"}, 180)
        recovery = time.monotonic() - at
        tally = c.tally()
        sent = {tid: len(c.events("transfer.delivery.sent", tid)) for tid in tids}
    notes = f"dead-lettered {len(dead)}; before replay {dict(parked)}; after {dict(states)}"
    if tally.problems:
        notes += "; " + "; ".join(tally.problems[:5])
    return ScenarioResult(6, "recipient down, dead letter, replay", transfers, tally.completed,
                          tally.lost, tally.duplicated, round(recovery, 2),
                          len(dead) == transfers and tally.completed == transfers
                          and not tally.lost and not tally.duplicated
                          and set(sent.values()) == {1}, notes)
