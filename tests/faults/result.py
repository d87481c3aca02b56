"""What a fault scenario reports, and the registry `bench/faults.py` runs them from.

Each scenario module (tests/faults/sNN_*.py) registers one function with `@scenario`:
it takes a fresh working folder, starts the real processes it needs (through the
harness), injects its fault, and returns a ScenarioResult counted from what the
recipient really holds (not from what the sender believes)."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable


@dataclass
class ScenarioResult:
    number: int
    name: str
    transfers: int  # transfers (or deliveries) put in
    completed: int  # finished as they should
    lost: int  # never arrived, or arrived incomplete
    duplicated: int  # arrived more than once at the recipient (per idempotency key)
    max_recovery_s: float  # longest time from the fault to work moving again
    passed: bool
    notes: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


Scenario = Callable[[Path], ScenarioResult]
SCENARIOS: dict[int, tuple[str, Scenario]] = {}


def scenario(number: int, name: str):
    """Register a scenario under its number in the issue's list."""

    def register(fn: Scenario) -> Scenario:
        SCENARIOS[number] = (name, fn)
        return fn

    return register
