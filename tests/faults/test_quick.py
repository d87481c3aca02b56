"""The quick fault scenarios (2, 3, 6, 9) in the main suite, run through the registry
bench/faults.py uses; the whole set (load included) is `python bench/faults.py`."""
from __future__ import annotations

import pytest

from tests.faults import (  # noqa: F401 (they register)
    s02_sigterm_mid_step,
    s03_visibility_timeout,
    s06_recipient_down,
    s09_receiver_killed,
)
from tests.faults.result import SCENARIOS

QUICK = [2, 3, 6, 9]
NEEDS = {2: ("redis",), 3: ("redis",), 6: (), 9: ()}


@pytest.mark.parametrize("number", [pytest.param(n, marks=[getattr(pytest.mark, m) for m in NEEDS[n]],
                                                 id=f"scenario-{n}") for n in QUICK])
def test_fault_scenario(number, tmp_path):
    _name, run = SCENARIOS[number]
    result = run(tmp_path)
    assert result.number == number
    assert result.transfers > 0
    assert (result.lost, result.duplicated) == (0, 0), result.notes
    assert result.completed == result.transfers, result.notes
    assert result.passed, result.notes
