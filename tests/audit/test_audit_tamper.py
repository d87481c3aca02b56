"""Every tamper case of issue 7 is detected by the offline verifier (N of N)."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from audit_tamper import CASES, detected, run_case
from gateway.cli.audit import audit as audit_group

@pytest.mark.parametrize("name", sorted(CASES))
def test_tamper_case_is_detected(name, sqlite_engine, log_key, tmp_path):
    problems = run_case(name, sqlite_engine, log_key, tmp_path)
    assert problems, f"{name} went undetected"
    assert detected(name, problems), problems


def test_an_honest_log_verifies_clean_and_the_cli_says_so(sqlite_engine, log_key, tmp_path):
    assert run_case(None, sqlite_engine, log_key, tmp_path) == []
    runner = CliRunner()
    files = sorted(tmp_path.glob("clean-*checkpoints*.json")) + sorted(tmp_path.glob("clean-kept-*.json"))
    args = ["verify", "--events", str(tmp_path / "clean-events.ndjson"),
            "--public-key", str(tmp_path / "log-key.pem")]
    for f in files:
        args += ["--checkpoints", str(f)]
    result = runner.invoke(audit_group, args)
    assert result.exit_code == 0, result.output
    assert "OK: 200 events" in result.output


@pytest.mark.postgres
def test_all_tamper_cases_on_postgresql(pg_databases, log_key, tmp_path):
    found = 0
    for name in sorted(CASES):
        problems = run_case(name, pg_databases.new(), log_key, tmp_path / name)
        found += detected(name, problems)
    print(f"tamper cases detected on PostgreSQL: {found} of {len(CASES)}")
    assert found == len(CASES)


def test_cli_exits_non_zero_with_one_line_per_problem(sqlite_engine, log_key, tmp_path):
    run_case("delete_one", sqlite_engine, log_key, tmp_path)
    args = ["verify", "--events", str(tmp_path / "delete_one-events.ndjson"),
            "--public-key", str(tmp_path / "log-key.pem"),
            "--checkpoints", str(tmp_path / "delete_one-checkpoints.json")]
    result = CliRunner().invoke(audit_group, args)
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line]
    assert any("1 event(s) missing from the log: seq 120" in line for line in lines)
    bad = CliRunner().invoke(audit_group, ["verify", "--events", str(tmp_path / "log-key.pem"),
                                           "--public-key", str(tmp_path / "log-key.pem"),
                                           "--checkpoints", str(tmp_path / "log-key.pem")])
    assert bad.exit_code == 2 and bad.output.startswith("error:")


@pytest.mark.parametrize("name,phrase", [("fork", "fork:"), ("roll_back", "rollback:"),
                                         ("truncate_regrow", "not an append-only extension")])
def test_checkpoints_alone_reveal_rewritten_history(name, phrase, sqlite_engine, log_key, tmp_path):
    """An auditor who only collects checkpoints (no events) still sees the history change."""
    run_case(name, sqlite_engine, log_key, tmp_path)
    files = sorted(tmp_path.glob(f"{name}-*.json"))
    args = ["verify", "--public-key", str(tmp_path / "log-key.pem")]
    for f in files:
        args += ["--checkpoints", str(f)]
    result = CliRunner().invoke(audit_group, args)
    assert result.exit_code == 1
    assert phrase in result.output, result.output


def test_checkpoints_alone_of_an_honest_log_verify(sqlite_engine, log_key, tmp_path):
    run_case(None, sqlite_engine, log_key, tmp_path)
    args = ["verify", "--public-key", str(tmp_path / "log-key.pem")]
    for f in sorted(tmp_path.glob("clean-*.json")):
        args += ["--checkpoints", str(f)]
    result = CliRunner().invoke(audit_group, args)
    assert result.exit_code == 0, result.output
