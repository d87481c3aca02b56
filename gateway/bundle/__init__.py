"""Parts of bundle assembly: the patient summary (Composition + PDF) and the
completeness manifest. The assembler itself is gateway/bundles.py."""
