"""The sending side: from a transfer's mapped records to a receipted delivery.

Owns bundle assembly (bundles.py, packed from units.py; the patient summary in
summary.py, the completeness manifest in manifest.py, one record delivered once in
same_document.py), documents too large to inline uploaded first (attachments.py,
uploads.py, bodies.py), delivery and the recipient's answers and receipts (delivery.py,
answers.py), DICOM instances beside the bundle (imaging.py), and "opened" receipts
coming back (opened.py). May import: exchange, runtime, trust, audit, storage,
connectors; never the receiving side (`gateway.inbound`), the engine or the faces.
"""
