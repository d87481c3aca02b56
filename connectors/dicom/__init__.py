"""Imaging: find, retrieve and forward a patient's DICOM studies.

- connector.py  the "dicom" and "dicomweb" connectors: study-by-study retrieve with
                completeness checks, retries of only what is missing, resume
- backends.py   where studies come from: DIMSE (C-FIND, C-MOVE into the shared SCP, C-GET
                proposing what the PACS holds) or DICOMweb (QIDO-RS, WADO-RS)
- qr.py         C-ECHO / C-FIND / C-MOVE / C-GET (pynetdicom), watched instead of timed out;
                C-GET proposes one context per (SOP class, transfer syntax)
- scp.py        the Storage SCP that C-MOVE sends to: configured sources only, each
                instance only for an open C-MOVE that expects it (docs/dicom.md)
- web.py        QIDO-RS and WADO-RS, the multipart response split as it streams
- intake.py     every received file: checked, hashed, handed to a pluggable sink, counted
- header.py     the few header attributes needed, read fast without decoding the data set
- uids.py       the DICOM UID grammar, checked before any UID is used
- study.py      expected vs received, the records yielded, the study manifest
- attempts.py   pulls in a row that left a study incomplete with nothing new, on disk
- forward.py    C-STORE and STOW-RS to the recipient, per-instance results for resume
- net.py        small documented pynetdicom subclasses (event-driven, fewer copies)
"""
