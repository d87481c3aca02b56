"""Tests of the tamper-evident audit log (issue 7)."""
