"""The FHIR models a serving process validates with are loaded before it takes work."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.fhir.fhir_peers import synthea_patients

ROOT = Path(__file__).resolve().parents[1]

# in a fresh interpreter: what validating a whole Synthea record still has to load
PROBE = """
import json, sys
from fhir.resources.R4B import get_fhir_model_class
warm = sys.argv[2] == "warm"
if warm:
    from gateway.runtime.warmup import fhir_models
    fhir_models()
loaded = set(sys.modules)
types = set()
for entry in json.load(open(sys.argv[1]))["entry"]:
    types.add(entry["resource"]["resourceType"])
    get_fhir_model_class(entry["resource"]["resourceType"]).model_validate(entry["resource"])
print(json.dumps({"types": len(types), "new": sorted(m for m in set(sys.modules) - loaded
                                                   if m.startswith("fhir.resources.R4B."))}))
"""


def probe(record: Path, mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, str(record), mode], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, check=True)
    return json.loads(done.stdout.splitlines()[-1])


def test_after_the_warm_up_a_synthea_record_loads_no_model():
    record = max(synthea_patients(8, 11), key=lambda f: f.stat().st_size)
    cold, warm = probe(record, "cold"), probe(record, "warm")
    assert cold["types"] >= 15 and len(cold["new"]) >= 30  # what the first transfer paid
    assert warm["new"] == []


def test_serve_loads_them_before_it_answers_unless_told_not_to(processes, receiver_config, tmp_path):
    from tests.helpers import free_port

    logs = {}
    for warm in (True, False):
        config = {**receiver_config, "warm_up_fhir_models": warm, "port": free_port(),
                  "data_dir": str(tmp_path / f"receiver-{warm}")}
        proc = processes(config, tmp_path, f"receiver-{warm}", "serve", "--receive").wait_http(60)
        logs[warm] = proc.log_path.read_text()
    assert "FHIR models loaded in" in logs[True]
    assert "FHIR models loaded in" not in logs[False]


def test_what_the_warm_up_loaded_is_out_of_the_collectors_way():
    """Full collections no longer traverse the loaded models (gc.freeze): they cost
    ~0.2 s of receiving or assembling the standard case's bundle."""
    code = ("import gc; from gateway.runtime.warmup import fhir_models; fhir_models(); "
            "print(gc.get_freeze_count(), sum(gc.get_count()))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                          timeout=300, check=True)
    frozen, tracked = map(int, done.stdout.split()[-2:])
    assert frozen > 100_000 and tracked < 1000
