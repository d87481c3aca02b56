"""What a transfer found, delivers, refused and could not ask for, per source.

The same report goes in the completeness manifest of the bundle, the transfer's API
view and the command line, so nobody reads a transfer as complete when it is not:
- found: records the source holds for the patient (every item but gaps);
- delivered: records that go to the recipient (in the bundle, or beside it for DICOM);
- refused: records found and not delivered, counted by reason (outside the
  authorization, another patient's demographics, broken at the source, ...), and the
  resources of a record that failed validation, counted by reason and named in `invalid`
  ("Type/id" at the source and why: they were meant to be delivered);
- gaps: what the source could not be asked for or would not give (resource types with
  no patient search, references left unresolved), named: they are not patient data.
Refused records are counted, never named: their names may say what the patient did not
release. Reasons carry no values from the records.
"""
from __future__ import annotations

from collections import Counter

GAP_STATES = ("not-searchable", "unresolved")
PENDING_STATES = ("pulled",)
# a follow-up's record whose every resource the recipient holds from an earlier transfer:
# not found anew, so neither delivered nor refused (engine/follow_ups.py)
SENT_BEFORE = "sent-before"


def report(sources, items) -> dict[str, dict]:
    """Source name -> its report, from the transfer's TransferSource and Item rows."""
    out = {src.name: _empty(src.state) for src in sources}
    refused: dict[str, Counter] = {name: Counter() for name in out}
    for item in items:
        entry = out.setdefault(item.source, _empty("unknown"))
        counter = refused.setdefault(item.source, Counter())
        if item.state in GAP_STATES:
            key = "notSearchable" if item.state == "not-searchable" else "unresolved"
            what = item.origin.split(":", 1)[-1]
            entry[key].append({"what": what, "reason": item.error or ""})
            continue
        if item.state == SENT_BEFORE:
            continue
        entry["found"] += 1
        if item.state == "mapped":
            entry["delivered"] += 1
        elif item.state in PENDING_STATES:
            entry["pending"] += 1
        else:
            counter[item.error or item.state] += 1
        for bad in (item.record_meta or {}).get("invalid", []):
            entry["invalidResources"] += 1
            counter[f"invalid resource: {bad.get('reason', '')}"] += 1
            entry["invalid"].append({"what": str(bad.get("origin", "")).rsplit("#", 1)[-1],
                                     "reason": bad.get("reason", "")})
    for name, entry in out.items():
        entry["refused"] = [{"reason": reason, "count": n}
                            for reason, n in sorted(refused[name].items())]
        entry["notSearchable"].sort(key=lambda g: g["what"])
        entry["unresolved"].sort(key=lambda g: g["what"])
        entry["invalid"].sort(key=lambda g: g["what"])
        entry["complete"] = (entry["pending"] == 0 and not entry["refused"]
                             and not entry["notSearchable"] and not entry["unresolved"])
    return out


def _empty(state: str) -> dict:
    return {"state": state, "found": 0, "delivered": 0, "pending": 0, "invalidResources": 0,
            "refused": [], "notSearchable": [], "unresolved": [], "invalid": []}
