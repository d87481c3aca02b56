"""A fax ingestor in its own process, for the kill tests: python ingest_runner.py DROP STORE TRANSFERS.json"""
from __future__ import annotations

import json
import sys
import threading
from datetime import date
from pathlib import Path

from connectors.fax.connector import FaxIngestor
from connectors.fax.match import TransferDescriptor
from connectors.fax.store import FaxStore

if __name__ == "__main__":
    drop, store, transfers = sys.argv[1:4]
    descriptors = [TransferDescriptor(t["transfer_id"], t["patient_name"], date.fromisoformat(t["birth_date"]),
                                      t["request_id"]) for t in json.loads(Path(transfers).read_text())]
    ingestor = FaxIngestor(Path(drop), FaxStore(Path(store)), b"test-cover-key-0123456789abcdef!",
                           lambda: descriptors, settle_seconds=0.05, empty_settle_seconds=0.05, workers=2)
    print("ready", flush=True)
    ingestor.run(threading.Event(), poll_seconds=0.05, use_inotify=False)
