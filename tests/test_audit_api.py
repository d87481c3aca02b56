"""Auditors' interfaces wired into the gateway: API, periodic checkpoints signed with the
gateway's key, CLI export, and the offline verifier over what was exported."""
import json

from sqlalchemy import text

from gateway.cli.main import main
from tests.helpers import bearer, make_token


def _activity(client, operator, claims_for, sign, jti):
    client.post("/authorizations", json={"jws": sign(claims_for(jti))}, headers=operator)
    r = client.post("/transfers", json={"authorization": jti, "sources": ["records"],
                                        "recipient": "center"}, headers=operator)
    tid = r.get_json()["id"]
    client.post(f"/transfers/{tid}/cancel", json={"reason": "test"}, headers=operator)
    return tid


def test_auditor_queries_chain_and_accounting(app, client, operator, claims_for, sign):
    tid = _activity(client, operator, claims_for, sign, "auth-audit-1")
    auditor = bearer(make_token(app, "auditor"))
    assert client.get("/audit/events", headers=operator).status_code == 403
    cp = client.post("/audit/checkpoints", headers=auditor).get_json()
    assert cp["tree_size"] >= 5
    by_patient = client.get("/audit/events", headers={
        **auditor, "X-Patient": "urn:oid:2.16.840.1.113883.19.5|MRN-000001"}).get_json()
    types = [e["event"]["type"] for e in by_patient["events"]]
    assert "authorization.verified" in types and "transfer.created" in types
    for e in by_patient["events"]:  # proven against the checkpoint; later ones wait for the next
        if e["event"]["seq"] <= cp["tree_size"]:
            assert e["inclusion_proof"]["tree_size"] == cp["tree_size"]
        else:
            assert "inclusion_proof" not in e
    chain = client.get(f"/audit/transfers/{tid}/chain", headers=auditor).get_json()
    chain_types = [e["event"]["type"] for e in chain["events"]]
    assert chain_types[0] == "authorization.verified"  # authorization -> ... -> the end
    assert chain_types.index("transfer.created") < chain_types.index("transfer.cancelled")
    assert client.get("/audit/events?since=yesterday", headers=auditor).status_code == 400
    mrn = "urn:oid:2.16.840.1.113883.19.5|MRN-000001"
    pdf = client.get("/audit/accounting?format=pdf", headers={**auditor, "X-Patient": mrn})
    assert pdf.status_code == 200 and pdf.data.startswith(b"%PDF-")
    # an identifier in the URL would land in access logs: refused, with where it goes
    for path in ("/audit/accounting", "/audit/events", "/audit/export"):
        r = client.get(f"{path}?patient={mrn}", headers=auditor)
        assert r.status_code == 400, path
        assert "X-Patient" in r.get_json()["issue"][0]["diagnostics"], path
    bundle = client.get("/audit/export?format=bundle", headers=auditor).get_json()
    assert bundle["resourceType"] == "Bundle" and bundle["entry"][0]["resource"]["resourceType"] == "AuditEvent"
    # the auditor's reads are on the log too
    reads = client.get("/audit/events?type=api.read.audit", headers=auditor).get_json()["events"]
    assert {e["event"]["type"] for e in reads} >= {"api.read.audit.events", "api.read.audit.chain"}


def test_public_checkpoints_and_proofs(app, client, operator, claims_for, sign):
    _activity(client, operator, claims_for, sign, "auth-audit-2")
    auditor = bearer(make_token(app, "auditor"))
    first = client.post("/audit/checkpoints", headers=auditor).get_json()
    _activity(client, operator, claims_for, sign, "auth-audit-3")
    second = client.post("/audit/checkpoints", headers=auditor).get_json()
    doc = client.get("/audit/checkpoints").get_json()  # no token: published
    assert [c["tree_size"] for c in doc["checkpoints"]] == [first["tree_size"], second["tree_size"]]
    assert doc["consistency_proofs"][0]["first"] == first["tree_size"]
    assert {k["kid"]: k["purpose"] for k in doc["jwks"]["keys"]}[second["key_id"]] == "checkpoint"
    proof = client.get(f"/audit/events/1/proof?tree_size={second['tree_size']}").get_json()
    assert proof["tree_size"] == second["tree_size"] and proof["path"]


def test_cli_export_then_offline_verify_detects_tampering(app, client, operator, claims_for, sign,
                                                           runner, tmp_path):
    _activity(client, operator, claims_for, sign, "auth-audit-4")
    svc = app.extensions["gateway"]
    assert runner.invoke(main, ["audit", "checkpoint"]).exit_code == 0
    events, cps, key = tmp_path / "events.ndjson", tmp_path / "cps.json", tmp_path / "jwks.json"
    assert runner.invoke(main, ["audit", "export", "--out", str(events)]).exit_code == 0
    assert runner.invoke(main, ["audit", "checkpoints", "--out", str(cps)]).exit_code == 0
    key.write_text(json.dumps(svc.keys.jwks()))
    ok = runner.invoke(main, ["audit", "verify", "--events", str(events), "--checkpoints", str(cps),
                              "--public-key", str(key)])
    assert ok.exit_code == 0, ok.output
    # an operator edits a stored event: the next export no longer matches the signed tree
    with svc.db.session() as s:
        s.execute(text("UPDATE audit_events SET actor = 'someone-else' WHERE seq = 2"))
    assert runner.invoke(main, ["audit", "export", "--out", str(events)]).exit_code == 0
    bad = runner.invoke(main, ["audit", "verify", "--events", str(events), "--checkpoints", str(cps),
                               "--public-key", str(key)])
    assert bad.exit_code == 1
    assert bad.stdout.strip()  # one line per problem


def test_export_streams_every_format_over_http(app, client, operator, claims_for, sign):
    """NDJSON exports are streamed after the view returns: each line is an event of the
    log, as many as the log holds, in both formats."""
    _activity(client, operator, claims_for, sign, "auth-audit-export")
    auditor = bearer(make_token(app, "auditor"))
    with app.extensions["gateway"].db.session() as s:
        size = s.execute(text("SELECT count(*) FROM audit_events")).scalar()
    plain = client.get("/audit/export?format=ndjson", headers=auditor)
    assert plain.status_code == 200 and plain.mimetype == "application/x-ndjson"
    entries = [json.loads(line) for line in plain.data.decode().splitlines()]
    assert len(entries) >= size and [e["event"]["seq"] for e in entries[:3]] == [1, 2, 3]
    fhir = client.get("/audit/export?format=fhir-ndjson", headers=auditor)
    assert fhir.status_code == 200
    events = [json.loads(line) for line in fhir.data.decode().splitlines()]
    assert len(events) >= size and {e["resourceType"] for e in events} == {"AuditEvent"}


def test_public_checkpoint_list_is_paged_and_cacheable(app, client):
    """The public list is bounded (100 a page by default, 1000 at most), each page's proofs
    chain on to the next, a full page may be cached for good and the last revalidated."""
    from gateway import audit
    from gateway.audit import checkpoints

    svc = app.extensions["gateway"]
    key = svc.keys.current("checkpoint")
    for n in range(103):  # 103 checkpoints of a growing log
        with svc.db.session() as s:
            audit.record(s, "test.event", actor="test", n=n)  # numbered at commit
        with svc.db.session() as s:
            checkpoints.create_checkpoint(s, key.private_key, origin="test", key_id=key.kid)
    first = client.get("/audit/checkpoints")
    doc = first.get_json()
    assert len(doc["checkpoints"]) == 100 and len(doc["consistency_proofs"]) == 99
    assert first.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    last_size = doc["checkpoints"][-1]["tree_size"]
    assert doc["next"] == f"/audit/checkpoints?since_size={last_size}&limit=100"
    rest = client.get(doc["next"])
    tail = rest.get_json()
    assert [c["tree_size"] for c in tail["checkpoints"]][0] == last_size  # the chain goes on
    assert len(tail["checkpoints"]) == 4 and "next" not in tail
    assert rest.headers["Cache-Control"] == "no-cache"
    again = client.get(doc["next"], headers={"If-None-Match": rest.headers["ETag"]})
    assert again.status_code == 304 and again.data == b""
    small = client.get("/audit/checkpoints?limit=2").get_json()
    assert len(small["checkpoints"]) == 2 and small["next"].endswith("&limit=2")
    assert client.get("/audit/checkpoints?limit=5000").status_code == 400
    assert client.get("/audit/checkpoints?limit=0").status_code == 400


def test_patient_keys_are_keyed_with_the_deployment_secret(app, client, operator, claims_for, sign):
    """An MRN cannot be found again by hashing candidates: the log's patient key is an HMAC
    with a secret kept in the keys folder (0600), and auditors look patients up by the
    identifier itself."""
    import hashlib
    import hmac
    import stat

    _activity(client, operator, claims_for, sign, "auth-audit-hmac")
    svc = app.extensions["gateway"]
    identifier = "urn:oid:2.16.840.1.113883.19.5|MRN-000001"
    with svc.db.session() as s:
        keys = {k for (k,) in s.execute(text(
            "SELECT DISTINCT patient_key FROM audit_events WHERE patient_key IS NOT NULL"))}
    secret_file = svc.settings.keys_dir / "patient-key.secret"
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert keys == {hmac.new(svc.patient_secret, identifier.encode(), hashlib.sha256).hexdigest()}
    assert hashlib.sha256(identifier.encode()).hexdigest() not in keys  # not a bare hash
    auditor = bearer(make_token(app, "auditor"))
    found = client.get("/audit/events", headers={**auditor, "X-Patient": identifier}).get_json()
    assert {"authorization.verified", "transfer.created"} <= {e["event"]["type"] for e in found["events"]}
    # the key itself may go in the URL: it names no one without the deployment's secret
    key = client.get(f"/audit/events?patient={keys.pop()}", headers=auditor).get_json()["events"]
    before = [e for e in key if e["event"]["seq"] <= found["events"][-1]["event"]["seq"]]
    assert [e["event"]["seq"] for e in before] == [e["event"]["seq"] for e in found["events"]]
    assert [e["event"]["type"] for e in key[len(before):]] == ["api.read.audit.events"]  # the read


def test_checkpoints_go_to_a_witness_the_database_cannot_take_back(
        sender_config, claims_for, sign, tmp_path):
    """Every new checkpoint is also written to a witness folder (another disk or host):
    an export whose newest events were removed verifies against the gateway's own older
    checkpoint, but not against what the witness holds."""
    from gateway import create_app
    from gateway.audit import export, verify
    from gateway.engine.checkpoints import checkpoint_now
    from tests.helpers import make_token

    witness = tmp_path / "witness"
    app = create_app({**sender_config, "audit_witness_dir": str(witness)})
    svc = app.extensions["gateway"]
    svc.keys.ensure()
    client = app.test_client()
    operator = bearer(make_token(app, "operator"))
    try:
        _activity(client, operator, claims_for, sign, "auth-witness-1")
        first = checkpoint_now(svc)
        assert checkpoint_now(svc) == first  # no growth, no new checkpoint
        _activity(client, operator, claims_for, sign, "auth-witness-2")
        second = checkpoint_now(svc)
        held = sorted(witness.glob("checkpoint-*.json"))
        assert [json.loads(p.read_text())["tree_size"] for p in held] == [
            first["tree_size"], second["tree_size"]]
        with svc.db.session() as s:
            lines = list(export.iter_ndjson(s, fhir=False))
        events, truncated = tmp_path / "events.ndjson", tmp_path / "truncated.ndjson"
        events.write_text("".join(lines))
        truncated.write_text("".join(lines[:first["tree_size"]]))
        first_only = tmp_path / "first.json"
        first_only.write_text(json.dumps(first))
        keys = tmp_path / "jwks.json"
        keys.write_text(json.dumps(svc.keys.jwks()))
        assert verify.verify_files(events, held, keys) == []
        assert verify.verify_files(truncated, [first_only], keys) == []  # the older view alone
        problems = verify.verify_files(truncated, held, keys)
        assert any(f"checkpoint size {second['tree_size']}" in p and "truncated" in p
                   for p in problems), problems
    finally:
        svc.close()
