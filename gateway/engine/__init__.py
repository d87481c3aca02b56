"""The engine: what runs by itself.

Owns the transfer state machine and its Celery tasks (transfers.py), the leases that let
one worker at a time run a step or pull a source (lease.py), the body of each step
(steps.py), each source's pull as a task of its own (pulls.py), what a
follow-up leaves out because its recipient holds it already (follow_ups.py), what an
authorization allows in the terms of our configuration (policy.py), connector options
and the DICOM sink into the blob store (sources.py, dicom_sink.py), the standing DICOM
receiver's routing and records and the worker's side of its C-MOVEs (dicom_receiver.py,
dicom_moves.py), the fax drop's cover
sheets, ingest and review queue (faxes.py), the periodic signing of audit checkpoints
(checkpoints.py), the FHIR Subscriptions held for an owner and the trigger inbox their
notifications fill (subscriptions.py, notifications.py), and what an operator can do, for the API and the command line alike
(operations.py). May import: the sending side (outbound), runtime, trust, audit,
storage, exchange, connectors and mappings; never the receiving side or the faces.
"""
