"""Benchmark: what verifying, storing and checking release authorizations costs.

    python bench/authorizations.py

Reference, measured in the same run: joserfc's bare signature check of the same JWS.
Reported: full verification (signature + schema + Consent) per second and its ratio to
the bare check, for EdDSA and ES256 and with a 2 MB signed form; import into a SQLite
database (verify + store + audit + commit) per second; and the per-call cost of the
checks every transfer step makes (check_active, covers_source, allows) on a stored row.
The last line is one JSON object with the figures.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import warnings
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from joserfc import jws as jose_jws  # noqa: E402
from joserfc.jwk import ECKey, OKPKey  # noqa: E402
from sqlalchemy import create_engine  # noqa: E402
from sqlalchemy.orm import Session  # noqa: E402

from gateway.trust.authorizations import (allows, check_active, covers_source, example_claims,
                                          import_authorization, new_issuer_key,
                                          sign_authorization, verify_authorization)
from gateway.trust.authorizations.schema import JWS_REGISTRY  # noqa: E402
from gateway.storage.models import Authorization, Base  # noqa: E402
from gateway.storage.sealed import ColumnKeys, bind_keys  # noqa: E402
from gateway.trust.issuers import TrustStore  # noqa: E402

ISSUER = "https://bench-issuer.example"
NOW = datetime.now(timezone.utc)
SECRET = b"b" * 32  # the deployment secret patient keys are an HMAC with


def rate(label: str, fn, n: int) -> float:
    fn()  # warm up
    start = time.perf_counter()
    for _ in range(n):
        fn()
    seconds = time.perf_counter() - start
    per_second = n / seconds
    print(f"  {label}: {n} in {seconds:.3f} s = {per_second:,.0f}/s", flush=True)
    return per_second


def main() -> None:
    warnings.simplefilter("ignore")
    ed, ec = new_issuer_key("bench-ed"), new_issuer_key("bench-ec", alg="ES256")
    trust = TrustStore.from_issuers({ISSUER: [ed, ec]})
    claims = example_claims(ISSUER, "bench-1", data_classes=["labs", "imaging", "notes"],
                            date_range=(date(2020, 1, 1), date(2025, 12, 31)), now=NOW)
    jws_ed, jws_ec = sign_authorization(claims, ed), sign_authorization(claims, ec)
    pdf = b"%PDF-1.4\n" + b"0" * (2 * 1024 * 1024) + b"\n%%EOF\n"
    jws_form = sign_authorization(example_claims(ISSUER, "bench-form", signed_form=pdf, now=NOW), ed)
    print(f"authorization sizes: {len(jws_ed)} bytes (EdDSA), {len(jws_ec)} (ES256), "
          f"{len(jws_form)} (with a 2 MB signed form)")
    ed_pub = OKPKey.import_key({k: v for k, v in ed.items() if k != "d"})
    ec_pub = ECKey.import_key({k: v for k, v in ec.items() if k != "d"})

    print("verification")
    bare_ed = rate("bare EdDSA signature check (reference)", lambda: jose_jws.deserialize_compact(
        jws_ed, ed_pub, algorithms=["EdDSA"], registry=JWS_REGISTRY), 2000)
    full_ed = rate("verify_authorization EdDSA", lambda: verify_authorization(jws_ed, trust), 1000)
    bare_ec = rate("bare ES256 signature check (reference)", lambda: jose_jws.deserialize_compact(
        jws_ec, ec_pub, algorithms=["ES256"], registry=JWS_REGISTRY), 2000)
    full_ec = rate("verify_authorization ES256", lambda: verify_authorization(jws_ec, trust), 1000)
    form = rate("verify_authorization with 2 MB form", lambda: verify_authorization(jws_form, trust), 10)

    print("storage (SQLite file, one commit per import)")
    with tempfile.TemporaryDirectory() as tmp:
        engine = create_engine(f"sqlite:///{tmp}/bench.db")
        bind_keys(engine, ColumnKeys(os.urandom(32)))  # the JWS, claims and Consent are sealed
        Base.metadata.create_all(engine)
        signed = [sign_authorization(example_claims(ISSUER, f"bench-imp-{i}", now=NOW), ed) for i in range(300)]
        start = time.perf_counter()
        with Session(engine) as session:
            for jws in signed:
                import_authorization(session, jws, trust, actor="bench", patient_secret=SECRET)
                session.commit()
        imports = len(signed) / (time.perf_counter() - start)
        print(f"  import_authorization: {len(signed)} = {imports:,.0f}/s")
        with Session(engine) as session:
            import_authorization(session, jws_ed, trust, actor="bench", patient_secret=SECRET)
            session.commit()
            row = session.get(Authorization, "bench-1")
            print("checks each transfer step makes, on the stored row")
            active = rate("check_active", lambda: check_active(row), 20000)
            source = rate("covers_source", lambda: covers_source(row, "org-demo-clinic"), 20000)
            day = date(2023, 4, 5)
            allowed = rate("allows (class + date filter)", lambda: allows(row, "labs", day), 20000)
            later = rate("check_active after 1 day", lambda: check_active(row, now=NOW + timedelta(days=1)), 20000)
        engine.dispose()

    print(json.dumps({
        "verify_eddsa_per_s": round(full_ed), "verify_es256_per_s": round(full_ec),
        "verify_eddsa_vs_bare_signature": round(full_ed / bare_ed, 3),
        "verify_es256_vs_bare_signature": round(full_ec / bare_ec, 3),
        "verify_with_2mb_form_per_s": round(form, 1),
        "import_sqlite_per_s": round(imports),
        "check_active_per_s": round(min(active, later)), "covers_source_per_s": round(source),
        "allows_per_s": round(allowed),
    }))


if __name__ == "__main__":
    main()
