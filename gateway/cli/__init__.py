"""The command line `records-gateway`: one module per command group (`keys`, `tokens`,
`authorizations`, `transfers`, `faxes`, `audit`; `serve` and `worker` in `serve`), the
root group in `main`, what they share in `common`, the live transfer display in
`progress`, the installation check in `doctor`, the standing DICOM receiver in `dicom_receiver`, and
the demo runner apart from them in `demo`. It may import any room of the gateway; nothing in `gateway/` imports it except
`gateway/__main__.py` (and the `records-gateway` console script).
"""
