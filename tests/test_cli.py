"""The command line: one clear line and a non-zero exit on errors, never a traceback."""
import json
import subprocess
import sys

import pytest

from gateway.cli.main import main


def run(runner, *args, input=None):
    return runner.invoke(main, list(args), input=input, catch_exceptions=False)


def test_init_creates_keys_and_is_idempotent(runner, sender_config, tmp_path, monkeypatch):
    monkeypatch.setenv("GATEWAY_DATA_DIR", str(tmp_path / "fresh"))
    config = json.loads((tmp_path / "cli-config.json").read_text())
    config.pop("blob_key")
    config.pop("data_dir")
    (tmp_path / "cli-config.json").write_text(json.dumps(config))
    first = run(runner, "init")
    assert first.exit_code == 0, first.output
    key = tmp_path / "fresh" / "keys" / "blob.key"
    assert key.exists() and oct(key.stat().st_mode)[-3:] == "600"
    before = key.read_text()
    assert run(runner, "init").exit_code == 0
    assert key.read_text() == before  # never overwritten
    signing = sorted(p.name.split("-")[0] for p in (tmp_path / "fresh" / "keys" / "signing").glob("*.jwk"))
    assert signing == ["bundle", "checkpoint", "receipt"]  # one key per purpose, made once


def test_token_create_prints_it_once(runner):
    result = runner.invoke(main, ["token", "create", "--name", "ops", "--role", "operator"])
    assert result.exit_code == 0
    assert result.stdout.strip().startswith("rgw_")
    bad = runner.invoke(main, ["token", "create", "--name", "x", "--role", "king"])
    assert bad.exit_code == 2 and "king" in bad.output


def test_authorization_import_verify_revoke(runner, claims_for, sign, tmp_path):
    path = tmp_path / "auth.jws"
    path.write_text(sign(claims_for("auth-cli-1")))
    verified = run(runner, "authorization", "verify", str(path))
    assert verified.exit_code == 0 and "valid: authorization auth-cli-1" in verified.output
    imported = run(runner, "authorization", "import", str(path))
    assert json.loads(imported.output)["id"] == "auth-cli-1"
    revoked = run(runner, "authorization", "revoke", "auth-cli-1", "--reason", "withdrawn")
    assert "revoked; 0 transfer(s) cancelled" in revoked.output


def test_bad_authorization_is_one_line(runner, claims_for, sign, tmp_path):
    claims = claims_for()
    claims["exp"] = claims["iat"] - 10
    path = tmp_path / "auth.jws"
    path.write_text(sign(claims))
    result = runner.invoke(main, ["authorization", "import", str(path)])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert "Traceback" not in result.output


def test_transfer_commands(runner, claims_for, sign, tmp_path):
    path = tmp_path / "auth.jws"
    path.write_text(sign(claims_for("auth-cli-2")))
    run(runner, "authorization", "import", str(path))
    created = run(runner, "transfer", "create", "--authorization", "auth-cli-2", "--source", "records",
                  "--recipient", "center")
    tid = json.loads(created.output)["id"]
    listed = run(runner, "transfer", "list")
    assert tid in listed.output and "pending" in listed.output
    assert "cancelled" in run(runner, "transfer", "cancel", tid).output
    status = runner.invoke(main, ["transfer", "status", tid, "--follow", "--timeout", "5"])
    assert status.exit_code == 1
    assert f"error: transfer {tid} cancelled" in status.output
    again = runner.invoke(main, ["transfer", "retry", tid])
    assert again.exit_code == 1 and "only a failed transfer can be retried" in again.output


@pytest.mark.parametrize("args,message", [
    (["transfer", "status", "nope"], "error: no transfer nope"),
    (["authorization", "revoke", "nope", "--reason", "x"], "error: authorization nope is not stored"),
    (["transfer", "create", "--authorization", "nope", "--source", "records", "--recipient", "center"],
     "error: no authorization nope"),
])
def test_errors_are_one_line(runner, args, message):
    result = runner.invoke(main, args)
    assert result.exit_code == 1
    assert result.output.startswith(message) and result.output.count("\n") == 1


def test_bad_setting_in_a_real_process_is_one_line(tmp_path):
    import os

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
           "GATEWAY_PORT": "eighty"}
    done = subprocess.run([sys.executable, "-m", "gateway", "transfer", "list"], env=env,
                          capture_output=True, text=True, cwd=tmp_path, timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == "error: setting port (GATEWAY_PORT): Input should be a valid " \
                                  "integer, unable to parse string as an integer"


def test_keys_rotate_keeps_old_keys_published(runner, app, client):
    before = client.get("/.well-known/jwks.json").get_json()["keys"]
    result = run(runner, "keys", "rotate")
    assert result.exit_code == 0 and "signing key rotated" in result.output
    after = client.get("/.well-known/jwks.json").get_json()["keys"]
    assert {k["kid"] for k in before} < {k["kid"] for k in after}
    from sqlalchemy import select

    from gateway.storage.models import AuditEvent
    with app.extensions["gateway"].db.session() as s:
        [event] = s.scalars(select(AuditEvent).filter_by(type="admin.key.rotated")).all()
    assert set(event.detail["new_kids"].values()) == {k["kid"] for k in after} - {k["kid"] for k in before}
    assert {k["kid"] for k in after if k.get("retired")} == {k["kid"] for k in before}


def test_completeness_table_names_what_a_person_must_know():
    from gateway.cli.transfers import completeness_lines

    report = {"ehr": {"state": "done", "found": 3, "delivered": 2, "pending": 0,
                      "invalidResources": 1, "complete": False,
                      "refused": [{"reason": "invalid resource: value: bad", "count": 1}],
                      "invalid": [{"what": "Observation/o9", "reason": "value: bad"}],
                      "notSearchable": [{"what": "Claim", "reason": "no patient search"}],
                      "unresolved": [{"what": "Device/d1", "reason": "read answered 404"}]}}
    lines = completeness_lines(report)
    assert lines[1].split() == ["ehr", "done", "3", "2", "0", "1"]
    assert lines[2:] == ["  refused 1: invalid resource: value: bad",
                         "  invalid: Observation/o9 (value: bad)",
                         "  not searchable: Claim (no patient search)",
                         "  unresolved: Device/d1 (read answered 404)",
                         "complete: no (see above)"]


def test_commands_in_a_real_process_print_no_migration_chatter(tmp_path):
    """`init` creates the schema and `token create` checks it, quietly: the migrations'
    INFO lines appear only when DEBUG is asked for."""
    import os

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")},
           "GATEWAY_DATA_DIR": str(tmp_path / "data")}

    def gateway(*args):
        done = subprocess.run([sys.executable, "-m", "gateway", *args], env=env,
                              capture_output=True, text=True, cwd=tmp_path, timeout=60)
        assert done.returncode == 0, done.stderr
        return done

    init = gateway("init")
    assert "database ready" in init.stdout and init.stderr == ""
    token = gateway("token", "create", "--name", "desk", "--role", "operator")
    assert len(token.stdout.strip()) > 20
    assert token.stderr.startswith("token id ") and token.stderr.count("\n") == 1
    loud = gateway("--log-level", "DEBUG", "token", "create", "--name", "desk-2", "--role", "operator")
    assert "alembic.runtime.migration" in loud.stderr
