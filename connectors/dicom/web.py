"""DICOMweb: QIDO-RS to find, WADO-RS to retrieve, streamed part by part.

A WADO-RS study response is one multipart/related body of every instance. It is read in
1 MB chunks and split on the boundary as it streams, without copying the bodies: each
part goes to the retrieval's streaming sink (`Retrieval.stream`: an intake worker hashes,
encrypts and stores it while the next part streams in) or else to a spool file (preamble
zeroed on the way), so memory holds a few chunks whatever the size of the study or of
one instance. Each part then goes through the same checks, sink and accounting as an
instance received over DIMSE (`Retrieval.take`).
"""
from __future__ import annotations

import logging
import os
import re
import uuid
from pathlib import Path
from urllib.parse import quote, urlsplit

import requests
import urllib3

from connectors.base import SourceRejected, SourceUnavailable

from .intake import Retrieval
from .uids import is_uid

LOGGER = logging.getLogger(__name__)

CHUNK = 1 << 20
PREAMBLE = 128
DICOM_JSON = "application/dicom+json"
WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'

STUDY_TAGS = {"StudyInstanceUID": "0020000D", "StudyDate": "00080020", "StudyTime": "00080030",
              "AccessionNumber": "00080050", "StudyDescription": "00081030",
              "ReferringPhysicianName": "00080090", "StudyID": "00200010",
              "PatientID": "00100020", "PatientName": "00100010", "PatientBirthDate": "00100030",
              "ModalitiesInStudy": "00080061", "SOPClassesInStudy": "00080062",
              "NumberOfStudyRelatedSeries": "00201206",
              "NumberOfStudyRelatedInstances": "00201208"}
SERIES_TAGS = {"SeriesInstanceUID": "0020000E", "Modality": "00080060",
               "SeriesNumber": "00200011", "SeriesDescription": "0008103E",
               "BodyPartExamined": "00180015", "Laterality": "00200060",
               "SeriesDate": "00080021", "SeriesTime": "00080031",
               "NumberOfSeriesRelatedInstances": "00201209"}
IMAGE_TAGS = {"SOPInstanceUID": "00080018", "SOPClassUID": "00080016",
              "InstanceNumber": "00200013", "NumberOfFrames": "00280008"}


def _from_json(obj: dict, tags: dict) -> dict:
    """Plain values from one DICOM JSON object (PS3.18 F.2) for the keywords in `tags`."""
    out = {}
    for keyword, tag in tags.items():
        element = obj.get(tag) or {}
        values = element.get("Value") or []
        if not values:
            continue
        if element.get("vr") == "PN":
            values = [v.get("Alphabetic", "") if isinstance(v, dict) else str(v)
                      for v in values]
        if element.get("vr") in ("IS", "US", "UL", "SL", "SS"):
            try:
                values = [int(v) for v in values]
            except (TypeError, ValueError):
                continue
        out[keyword] = values if len(values) > 1 or keyword in (
            "ModalitiesInStudy", "SOPClassesInStudy") else values[0]
    return out


class MultipartSplitter:
    """Incremental multipart/related parser: feed() bytes, get part events.

    Calls `start(headers)` at each part, `data(piece)` for its body in pieces, and
    `end()` when it is complete. The pieces are memoryviews of the chunks fed (so those
    must be bytes, never reused): bodies are not copied. Between chunks it keeps at most
    a delimiter's length of body, or the start of a part's headers (the next chunk is
    then joined to it: once a request, and where headers straddle two chunks).
    """

    def __init__(self, boundary: bytes, start, data, end):
        self.delim = b"\r\n--" + boundary
        self.start, self.data, self.end = start, data, end
        self.carry = b"\r\n"  # so a boundary on the very first line matches
        self.state = "preamble"
        self.finished = False

    def feed(self, chunk: bytes) -> None:
        width = len(self.delim)
        pos = 0
        if self.state == "body" and self.carry and len(chunk) >= width:
            # the held-back tail of the last chunk: a delimiter, or body after all
            joined = self.carry + chunk[:width - 1]
            at = joined.find(self.delim)
            if at < 0:
                self.data(memoryview(self.carry))
            else:
                if at:
                    self.data(memoryview(self.carry)[:at])
                self.end()
                pos = at + width - len(self.carry)
                self.state = "after-delim"
            self.carry = b""
        elif self.carry:
            chunk, self.carry = self.carry + chunk, b""  # small: headers, a short tail
        self._parse(chunk, pos)

    def _parse(self, buf: bytes, pos: int) -> None:
        width = len(self.delim)
        while True:
            if self.state in ("preamble", "body"):
                at = buf.find(self.delim, pos)
                if at < 0:
                    cut = max(pos, len(buf) - width + 1)
                    if self.state == "body" and cut > pos:
                        self.data(memoryview(buf)[pos:cut])
                    self.carry = buf[cut:]
                    return
                if self.state == "body":
                    if at > pos:
                        self.data(memoryview(buf)[pos:at])
                    self.end()
                pos = at + width
                self.state = "after-delim"
            if self.state == "after-delim":
                if len(buf) - pos < 2:
                    self.carry = buf[pos:]
                    return
                if buf[pos:pos + 2] == b"--":
                    self.finished = True
                    self.state = "epilogue"
                    return
                self.state = "headers"
            if self.state == "headers":
                at = buf.find(b"\r\n\r\n", pos)
                if at < 0:
                    if len(buf) - pos > 64 * 1024:
                        raise ValueError("multipart part headers too long")
                    self.carry = buf[pos:]
                    return
                lines = buf[pos:at].decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:] if lines and not lines[0].strip() else lines:
                    name, _, value = line.partition(":")
                    if name.strip():
                        headers[name.strip().lower()] = value.strip()
                pos = at + 4
                self.start(headers)
                self.state = "body"
            if self.state == "epilogue":
                return


class _PartWriter:
    """Hands each part to the retrieval's streaming sink (`Retrieval.stream`), or else
    writes it to a spool file, zeroing its preamble on the way, and hands the finished
    file to the retrieval's workers (`Retrieval.submit`)."""

    def __init__(self, retrieval: Retrieval, via: str = "wado-rs"):
        self.retrieval = retrieval
        self.via = via
        self.fh = None
        self.stream = None
        self.count = 0

    def start(self, headers: dict) -> None:
        ctype = headers.get("content-type", "application/dicom").split(";")[0].strip().lower()
        self.ok = ctype == "application/dicom"
        self.reason = "" if self.ok else f"unexpected part type {ctype[:60]!r}"
        self.size = 0
        self.stream = None
        if self.ok and self.retrieval.streams():
            self.stream = self.retrieval.stream(self.via)  # zeroes the preamble itself
            return
        self.retrieval.begin()
        self.path = Path(self.retrieval.spool) / f"rx-{uuid.uuid4().hex}.part"
        self.fh = open(self.path, "wb")

    def data(self, view: memoryview) -> None:
        if self.stream is not None:
            self.stream.write(view)
            return
        if self.size < PREAMBLE and len(view):
            n = min(PREAMBLE - self.size, len(view))
            self.fh.write(bytes(n))
            view = view[n:]
            self.size += n
        if len(view):
            self.fh.write(view)
            self.size += len(view)

    def end(self) -> None:
        self.count += 1
        if self.stream is not None:
            stream, self.stream = self.stream, None
            stream.finish(True)
            return
        self.fh.close()
        self.fh = None
        if not self.ok:
            self.retrieval.error("", f"WADO-RS part {self.count}: {self.reason}", self.via)
            os.unlink(self.path)
            self.retrieval._end()
            return
        self.retrieval.submit(self.path, via=self.via)

    def close(self) -> None:
        """Finish: drop a part cut off mid-way."""
        if self.stream is not None:
            stream, self.stream = self.stream, None
            stream.finish(False)
        if self.fh is not None:
            self.fh.close()
            self.fh = None
            try:
                os.unlink(self.path)
            except OSError:
                pass
            self.retrieval._end()


class DicomWebClient:
    """QIDO-RS and WADO-RS against one DICOMweb base URL."""

    def __init__(self, base_url: str, *, session: requests.Session | None = None,
                 timeout: float = 60, headers: dict | None = None, auth=None,
                 verify: bool | str = True):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise SourceRejected(f"DICOMweb base URL must be http(s): {base_url[:80]!r}")
        self.base = base_url.rstrip("/")
        self.session = session or requests.Session()
        self.session.headers.update(headers or {})
        if auth is not None:
            self.session.auth = auth
        self.session.verify = verify
        self.timeout = timeout

    def _url(self, *uids: str, tail: str = "") -> str:
        for uid in uids:
            if not is_uid(uid):
                raise SourceRejected(f"refusing to build a URL from an invalid UID {uid[:70]!r}")
        path = "".join(f"/{kind}/{uid}" for kind, uid in zip(
            ("studies", "series", "instances"), uids))
        return f"{self.base}{path}{tail}"

    def _get(self, url: str, **kwargs) -> requests.Response:
        try:
            # never follow a redirect: the configured headers (API keys) would go along
            resp = self.session.get(url, timeout=self.timeout, allow_redirects=False, **kwargs)
        except requests.RequestException as exc:
            raise SourceUnavailable(f"DICOMweb request failed: {type(exc).__name__}") from None
        if 300 <= resp.status_code < 400:
            resp.close()
            raise SourceRejected(f"DICOMweb server redirected (HTTP {resp.status_code}); redirects "
                                 "are not followed: configure its final dicomweb_url")
        if resp.status_code in (429, 502, 503, 504) or resp.status_code >= 500:
            resp.close()
            raise SourceUnavailable(f"DICOMweb server answered {resp.status_code}")
        if resp.status_code >= 400:
            resp.close()
            err = SourceRejected(f"DICOMweb server answered {resp.status_code}")
            err.status = resp.status_code
            raise err
        return resp

    def _qido(self, url: str, params: dict, tags: dict) -> list[dict]:
        params = dict(params)
        params["includefield"] = ",".join(tags.values())
        resp = self._get(url, params=params, headers={"Accept": DICOM_JSON})
        if resp.status_code == 204 or not resp.content:
            return []
        try:
            body = resp.json()
        except ValueError:
            raise SourceRejected("QIDO-RS answer is not JSON") from None
        if not isinstance(body, list):
            raise SourceRejected("QIDO-RS answer is not a list")
        return [_from_json(obj, tags) for obj in body if isinstance(obj, dict)]

    def echo(self) -> None:
        self._qido(self._url(tail="/studies"), {"limit": "1"}, {"StudyInstanceUID": "0020000D"})

    def search_studies(self, match: dict) -> list[dict]:
        return self._qido(self._url(tail="/studies"), match, STUDY_TAGS)

    def search_series(self, study: str) -> list[dict]:
        return self._qido(self._url(study, tail="/series"), {}, SERIES_TAGS)

    def search_instances(self, study: str, series: str) -> list[dict]:
        return self._qido(self._url(study, series, tail="/instances"), {}, IMAGE_TAGS)

    def retrieve(self, retrieval: Retrieval, study: str, series: str | None = None,
                 sop: str | None = None) -> int:
        """WADO-RS a study, series or instance into `retrieval`; returns parts received."""
        uids = [u for u in (study, series, sop) if u]
        resp = self._get(self._url(*uids), headers={"Accept": WADO_ACCEPT}, stream=True)
        ctype = resp.headers.get("Content-Type", "")
        match = re.search(r'boundary="?([^";]+)"?', ctype, re.I)
        if not ctype.lower().startswith("multipart/related") or not match:
            resp.close()
            raise SourceRejected(f"WADO-RS answer is not multipart/related: {ctype[:80]!r}")
        writer = _PartWriter(retrieval)
        splitter = MultipartSplitter(match.group(1).encode("latin-1"), writer.start,
                                     writer.data, writer.end)
        try:
            # raw.read: requests' iter_content reads a chunked body in many small pieces
            while chunk := resp.raw.read(CHUNK, decode_content=True):
                retrieval.touch()
                splitter.feed(chunk)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            raise SourceUnavailable(f"WADO-RS stream broke off: {type(exc).__name__}") from None
        except ValueError as exc:
            raise SourceRejected(f"malformed WADO-RS multipart: {exc}") from None
        finally:
            resp.close()
            writer.close()
        if not splitter.finished:
            raise SourceUnavailable("WADO-RS stream ended before its closing boundary")
        return writer.count


def quote_param(value: str) -> str:
    return quote(value, safe="")
