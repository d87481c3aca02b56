"""The longer fault scenarios (test_slow.py) run only when asked: the main suite runs
the quick subset; `python bench/faults.py` runs them all."""
import os

collect_ignore = [] if os.environ.get("GATEWAY_FAULTS_SLOW") == "1" else ["test_slow.py"]
