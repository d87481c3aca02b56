"""Finding the authorization's patient on a FHIR server: by its identifiers, else by
family name + birth date (+ first given name). Zero or several matches stop the source
with a clear error; the connector never guesses. Messages carry counts, never the
identifiers or names themselves."""
from __future__ import annotations

import orjson

from connectors.base import RecordQuery, SourceRejected


def match_patient(http, base_url: str, query: RecordQuery) -> str:
    """The server id of the query's patient."""
    found: set[str] = set()
    tried = 0
    for ident in query.identifiers:
        tried += 1
        found |= _search(http, [("identifier", f"{_escape(ident.system)}|{_escape(ident.value)}")], None)
    by_name = bool(query.family_name and query.birth_date)
    if not found and by_name:
        tried += 1
        params = [("family", _escape(query.family_name)), ("birthdate", query.birth_date.isoformat())]
        if query.given_names:
            params.append(("given", _escape(query.given_names[0])))
        found = _search(http, params, query)
    if not tried:
        raise SourceRejected("the authorization names no patient identifiers, nor name and birth date")
    if not found:
        raise SourceRejected(f"no patient on {base_url} matches the authorization "
                             f"({len(query.identifiers)} identifiers{', name and birth date' if by_name else ''})")
    if len(found) > 1:
        raise SourceRejected(f"{len(found)} patients on {base_url} match the authorization; refusing to guess")
    return found.pop()


def _escape(value: str) -> str:
    """FHIR search escaping: `\\`, `|`, `,` and `$` are separators unless escaped."""
    for ch in ("\\", "|", ",", "$"):
        value = value.replace(ch, "\\" + ch)
    return value


def _search(http, params, query: RecordQuery | None) -> set[str]:
    got = http.get("Patient", params=[*params, ("_count", "10")])
    try:
        doc = orjson.loads(got.content)
    except orjson.JSONDecodeError:
        raise SourceRejected("Patient search answered with something that is not JSON") from None
    if not isinstance(doc, dict):
        raise SourceRejected("Patient search did not answer with a Bundle")
    ids = set()
    for entry in doc.get("entry") or ():
        res = entry.get("resource") if isinstance(entry, dict) else None
        if not isinstance(res, dict) or res.get("resourceType") != "Patient" or not res.get("id"):
            continue
        if (entry.get("search") or {}).get("mode", "match") != "match":
            continue
        if query is not None and not _same_person(res, query):
            continue
        ids.add(res["id"])
    if any(isinstance(link, dict) and link.get("relation") == "next" for link in doc.get("link") or ()):
        ids.add("(more)")  # more pages of matches: certainly ambiguous
    return ids


def _same_person(patient: dict, query: RecordQuery) -> bool:
    """Servers match names loosely (prefix, case); we want the same family name exactly."""
    if patient.get("birthDate") != query.birth_date.isoformat():
        return False
    family = query.family_name.casefold()
    return any(isinstance(n, dict) and str(n.get("family", "")).casefold() == family
               for n in patient.get("name") or ())
