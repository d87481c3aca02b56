"""A synthetic patient with values found nowhere else, and a search for them in bytes as
an attacker would: plain, in other letter case, base64 or base64url at any alignment, and
inside base64-looking runs (a JWS's parts) and zlib streams, decoded."""
from __future__ import annotations

import base64
import binascii
import random
import re
import string
import zlib
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Patient:
    family: str
    given: str
    birth_date: str
    mrn: str

    @classmethod
    def new(cls) -> "Patient":
        rng = random.SystemRandom()
        word = lambda n: "".join(rng.choice(string.ascii_lowercase) for _ in range(n))  # noqa: E731
        day = f"19{rng.randint(31, 59)}-{rng.randint(1, 12):02d}-{rng.randint(10, 28):02d}"
        return cls(family="Qu" + word(8), given="Zy" + word(6), birth_date=day,
                   mrn="MRN-" + "".join(rng.choice(string.digits) for _ in range(9)))

    def claims_patient(self) -> dict:
        return {"name": {"family": self.family, "given": [self.given]}, "birthDate": self.birth_date,
                "identifiers": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": self.mrn}]}

    def needles(self) -> dict[str, bytes]:
        """What must not be found, by what it is."""
        return {"family name": self.family.encode(), "given name": self.given.encode(),
                "birth date": self.birth_date.encode(),
                "birth date (DICOM)": self.birth_date.replace("-", "").encode(),
                "MRN": self.mrn.encode()}


def _encoded_forms(needle: bytes) -> list[bytes]:
    """The needle's base64 and base64url forms at each of the three alignments it can
    have inside a longer encoded text (the characters it shares with its neighbours cut off)."""
    forms = []
    for pad in range(3):
        for encode in (base64.b64encode, base64.urlsafe_b64encode):
            text = encode(b"\0" * pad + needle).rstrip(b"=")
            start = (pad * 8 + 5) // 6 + (1 if pad else 0)
            end = len(text) - 1
            if end - start >= 6:
                forms.append(text[start:end])
    return forms


_B64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{16,}={0,2}")


def _decoded_runs(data: bytes) -> list[bytes]:
    out = []
    for run in _B64_RUN.findall(data):
        text = run.rstrip(b"=")
        for alphabet in (b"-_", b"+/"):
            try:
                out.append(base64.b64decode(text + b"=" * (-len(text) % 4), altchars=alphabet))
            except (binascii.Error, ValueError):
                pass
    return out


def _inflated(data: bytes) -> list[bytes]:
    out = []
    for match in re.finditer(rb"\x78[\x01\x5e\x9c\xda]", data):
        try:
            out.append(zlib.decompressobj().decompress(data[match.start():], 1 << 24))
        except zlib.error:
            pass
    return out


def find(needles: dict[str, bytes], data: bytes, depth: int = 2) -> set[str]:
    """The names of the needles found in `data` in any of the forms above."""
    lowered = data.lower()
    found = set()
    for name, needle in needles.items():
        if needle.lower() in lowered or any(form in data for form in _encoded_forms(needle)):
            found.add(name)
    if depth and len(found) < len(needles):
        rest = {k: v for k, v in needles.items() if k not in found}
        for inner in _decoded_runs(data) + _inflated(data):
            found |= find(rest, inner, depth - 1)
    return found


def find_in_tree(needles: dict[str, bytes], root: Path) -> dict[str, set[str]]:
    """Each file under `root` (relative path) -> the needles found in its raw bytes."""
    hits = {}
    for path in sorted(p for p in Path(root).rglob("*") if p.is_file()):
        found = find(needles, path.read_bytes())
        if found:
            hits[str(path.relative_to(root))] = found
    return hits
