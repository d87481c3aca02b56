"""The JSON of a bundle on the wire, on both sides: every number keeps its text.

A FHIR source's decimals travel as the source wrote them (`1.00`, `0.001530`, `1.5e3`,
`-0`): the sending side parses stored resources and the receiving side parses bundles
with `loads` (numbers that are not plain integers become `Number`s, which remember their
text), and both write with `dumps` (each `Number` as its text). The canonical form an
entry hash is taken over (`gateway.exchange.ids.canonical`) is `dumps` with sorted keys:
compact, UTF-8, each number as its text, so the sender's hash and the receiver's agree
whenever they hold the same text. One implementation, shared with the mappings that
produce the JSON: mappings/fhir/jsontext.py.
"""
from __future__ import annotations

from mappings.fhir.jsontext import JSONError, Number, depth, dumps, loads

__all__ = ["JSONError", "Number", "depth", "dumps", "loads"]
