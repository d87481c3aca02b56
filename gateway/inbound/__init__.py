"""The receiving side (receive mode): what a second-opinion center's gateway takes in.

Owns accepting a signed transaction Bundle and answering with a signed receipt
(receive.py) once every record in it is within its Consent (scope.py), documents
uploaded before it (uploads.py), DICOM instances by STOW-RS (stow.py), expiry of uploads
no bundle took (expiry.py, tasks.py), the center's "opened" receipts (opened.py) and its
second opinion sent back (replies.py).
May import: exchange, runtime, trust, audit, storage, connectors' DICOM parsing and
table of data classes, mappings; never the sending side (`gateway.outbound`), the engine or the faces.
"""
