"""Fax: records that arrive by fax (or as PDFs) in a drop folder, matched to their transfer.

- connector.py  the "fax-drop" connector: claim each dropped file, match it, yield what
                belongs to the transfer, quarantine what is hostile; lose none
- store.py      the connector's own store, every file in exactly one state folder
- cover.py      records-request cover sheets (PDF with an HMAC'd QR code), made and read
- match.py      which open transfer a fax belongs to: cover code, sidecar, text; or review
- review.py     the review queue of faxes no rule could match, for a person
- sandbox.py    untrusted files parsed in a child process under rlimits (child.py runs
                there, pages.py does its page work: render, QR codes, text, OCR, PDF;
                pdfcheck.py sizes a PDF's images and streams before PDFium decodes them)
- watch.py      inotify on the drop folder, a timer as the fallback
"""
