"""The longer fault scenarios (4, 5, 7, 8, 10, 11, 12), one test each, run through the
registry bench/faults.py uses. Not in the main suite (it runs the quick subset,
test_quick.py): collected only with GATEWAY_FAULTS_SLOW=1 (tests/faults/conftest.py).
    GATEWAY_FAULTS_SLOW=1 python -m pytest -q tests/faults/test_slow.py"""
from __future__ import annotations

import importlib

import pytest

from tests.faults.result import SCENARIOS

MODULES = {4: "s04_redis_restart", 5: "s05_postgres_restart", 7: "s07_source_faults",
           8: "s08_disk_full",
           10: "s10_clock_skew", 11: "s11_slow_peers", 12: "s12_bad_input_under_load"}


@pytest.mark.parametrize("number", [pytest.param(n, id=f"scenario-{n}") for n in MODULES])
def test_fault_scenario(number, tmp_path):
    importlib.import_module(f"tests.faults.{MODULES[number]}")  # it registers itself
    _name, run = SCENARIOS[number]
    result = run(tmp_path)
    assert result.number == number and result.transfers > 0
    assert (result.lost, result.duplicated) == (0, 0), result.notes
    assert result.passed, result.notes
