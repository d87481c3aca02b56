"""Match rate of the fax connector on generated faxes of varied quality.

Generates 240 faxes (cover sheets through simulated fax lines at 204x196 and 204x98 dpi,
G3/G4 TIFF or fax-server PDF, skew up to 4 degrees, speckle noise up to 4 %; letters with
a text layer; scanned letters for OCR; covers with the code blotted out; forged codes;
codes of closed transfers), drops them into a folder, runs the real ingestor over it
and compares every decision with the truth.

    python bench/fax_match.py

Last line: one JSON object with faxes, matched_correctly, matched_wrongly (target 0),
readable_unmatched (target 0: every fax whose cover code is readable must match), and
timings, including a reference: zxing-cpp alone on the same cover pages in-process.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from multiprocessing import Pool
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests" / "fax")]

import faxgen  # noqa: E402
from connectors.fax.cover import CoverSheet, decode_cover, render_cover_pdf  # noqa: E402
from connectors.fax.connector import FaxIngestor  # noqa: E402
from connectors.fax.match import TransferDescriptor  # noqa: E402
from connectors.fax.store import FaxStore, read_json  # noqa: E402

KEY = b"bench-cover-key-0123456789abcdef"
PLAN = [("cover", 160), ("letter", 30), ("scan", 15), ("blotted", 15), ("forged", 10), ("closed", 10)]


def cover(person, key=KEY) -> bytes:
    return render_cover_pdf(CoverSheet(person.transfer_id, person.name, person.birth_date, person.request_id,
                                       "+1 555 0100", "Second Opinion Center"), key)


def make(job):
    """Write one fax; return (file name, expected transfer id or None, kind, readable cover)."""
    n, kind, person, drop = job
    rng = random.Random(n)
    fine = rng.random() < 0.5
    skew = rng.uniform(-4, 4)
    noise = rng.choice([0, 0.005, 0.01, 0.02, 0.03, 0.04])
    records = faxgen.records_pdf(person, rng.randint(1, 3), seed=n, mention=kind != "cover" or rng.random() < 0.5,
                                 birth_format=rng.choice(["%m/%d/%Y", "%Y-%m-%d", "%d %B %Y", "%B %d, %Y"]))
    expect = person.transfer_id
    if kind in ("cover", "blotted", "forged", "closed"):
        pages = faxgen.render(cover(person, KEY if kind != "forged" else b"forger-key-0123456789abcdefghij"), 204)
        if kind == "blotted":
            pages[0] = faxgen.blot(pages[0], (0.55, 0.15, 0.92, 0.45))
        pages += faxgen.render(records, 204)
        if kind in ("forged", "closed"):
            expect = None
    elif kind == "letter":
        name = f"f{n:04d}-{kind}.pdf"
        (drop / name).write_bytes(records)
        return name, expect, kind, False
    else:  # scan: an image-only PDF, no cover
        pages = faxgen.render(records, 300)
        scans = [faxgen.faxify(p, fine=True, skew=rng.uniform(-1, 1), noise=0.002, seed=n).convert("L")
                 for p in pages]
        name = f"f{n:04d}-{kind}.pdf"
        faxgen.scanned_pdf(scans, drop / name, dpi=300)
        return name, expect, kind, False
    frames = [faxgen.faxify(p, fine=fine, skew=skew, noise=noise, seed=n * 10 + i) for i, p in enumerate(pages)]
    tif = drop / f".f{n:04d}.tif"
    faxgen.save_tiff(frames, tif, fine=fine, compression=rng.choice(["group3", "group4"]))
    if rng.random() < 0.4:
        name = f"f{n:04d}-{kind}.pdf"
        faxgen.tiff_to_pdf(tif, drop / name)
        tif.unlink()
    else:
        name = f"f{n:04d}-{kind}.tif"
        os.rename(tif, drop / name)
    return name, expect, kind, kind in ("cover", "closed")


def main() -> None:
    people = faxgen.people(60, seed=3)
    open_people, closed_people = people[:50], people[50:]
    descriptors = [TransferDescriptor(p.transfer_id, p.name, p.birth_date, p.request_id) for p in open_people]
    work = Path(tempfile.mkdtemp(prefix="fax-bench-"))
    drop = work / "drop"
    drop.mkdir()
    jobs, n = [], 0
    for kind, count in PLAN:
        for _ in range(count):
            person = (closed_people if kind == "closed" else open_people)[n % (10 if kind == "closed" else 50)]
            jobs.append((n, kind, person, drop))
            n += 1
    print(f"generating {len(jobs)} faxes in {drop} ...", flush=True)
    started = time.monotonic()
    with Pool(2) as pool:
        truth = {name: (expect, kind, readable) for name, expect, kind, readable in pool.map(make, jobs, chunksize=4)}
    print(f"generated in {time.monotonic() - started:.1f} s", flush=True)

    print("reference: zxing-cpp alone on 20 cover pages ...", flush=True)
    ref_pages = [faxgen.faxify(faxgen.render(cover(p), 204)[0], fine=True, skew=2, noise=0.01, seed=i)
                 for i, p in enumerate(open_people[:20])]
    t0 = time.monotonic()
    ref_ok = sum(1 for img in ref_pages if (c := decode_cover(img, KEY)) and c.valid)
    ref_seconds = (time.monotonic() - t0) / len(ref_pages)

    print("ingesting ...", flush=True)
    store = FaxStore(work / "store")
    done = []
    ingestor = FaxIngestor(drop, store, KEY, lambda: descriptors, settle_seconds=0.0, empty_settle_seconds=0.0,
                           on_result=lambda o: (done.append(o), len(done) % 20 == 0 and print(
                               f"  {len(done)} faxes processed", flush=True)), workers=2)
    t0 = time.monotonic()
    while os.listdir(drop) or store.ids("claimed"):
        ingestor.scan_once()
    ingest_seconds = time.monotonic() - t0

    stats = {"faxes": len(truth), "matched_correctly": 0, "matched_wrongly": 0, "readable_unmatched": 0,
             "review": 0, "quarantined": 0, "by_method": {}, "by_kind": {}}
    for state in ("matched", "review", "quarantine"):
        for fax_id in store.ids(state):
            folder = store.path(state, fax_id)
            name = read_json(folder / "meta.json")["source_name"]
            expect, kind, readable = truth[name]
            result = read_json(folder / "result.json")
            got = result.get("transfer_id") if state == "matched" else None
            per = stats["by_kind"].setdefault(kind, {"faxes": 0, "correct": 0, "wrong": 0, "review": 0})
            per["faxes"] += 1
            if state == "quarantine":
                stats["quarantined"] += 1
            elif state == "review":
                stats["review"] += 1
                per["review"] += 1
            if got is not None:
                stats["by_method"][result["match"]] = stats["by_method"].get(result["match"], 0) + 1
                if got == expect:
                    stats["matched_correctly"] += 1
                    per["correct"] += 1
                else:
                    stats["matched_wrongly"] += 1
                    per["wrong"] += 1
            if readable and expect is not None and got != expect:
                stats["readable_unmatched"] += 1
    stats.update(
        readable_covers=sum(1 for e, k, r in truth.values() if r and e is not None),
        ingest_seconds=round(ingest_seconds, 1),
        seconds_per_fax=round(ingest_seconds / len(truth), 3),
        reference_decode_seconds_per_page=round(ref_seconds, 4),
        reference_decoded=f"{ref_ok}/{len(ref_pages)}",
        ratio_pipeline_to_decode=round((ingest_seconds / len(truth)) / max(ref_seconds, 1e-6), 1),
    )
    shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(stats, sort_keys=True))


if __name__ == "__main__":
    main()
