"""Constants shared by the authorization tests (imported by name: the test folder is on sys.path)."""
from datetime import datetime, timezone

ISSUER = "https://esign.example.org"
OTHER_ISSUER = "https://intake.second-opinion.example"
NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=timezone.utc)
PATIENT_SECRET = b"p" * 32  # the deployment secret audit.patient_key is keyed with
