"""A fast path for incoming C-STORE requests, below pynetdicom's DIMSE message classes.

pynetdicom turns each C-STORE into several pydicom Datasets (the command set decoded,
a primitive built attribute by attribute with validation, file meta information created
and written, the response built and encoded the same way): about a millisecond of
Python per instance, more than the network costs. `FastDIMSE` (a subclass of its
DIMSEServiceProvider) handles a C-STORE request itself when the association has a
`store_begin` hook:

- the command set (implicit VR little endian, group 0000, a few dozen bytes) is read
  with `struct`, and `store_begin(assoc, context_id, command)` decides at once: a ticket
  that takes the instance's bytes, or a refusal status (the data set is then read and
  dropped);
- the ticket gets a preamble of zeros, "DICM" and a file meta group built from the
  command and the accepted transfer syntax, then the data set fragments as they arrive:
  never decoded, never whole in memory (a file in the spool, or a streaming sink);
- when the last fragment is in, `ticket.end(True)` returns the status, and the C-STORE
  response (six elements) is encoded with `struct` and queued to the DUL.
Anything else (other messages, a command set split over several fragments, or
associations without the hook) goes through pynetdicom unchanged. If the association
ends mid-instance, `drop()` calls `ticket.end(False)`, which discards what came.
"""
from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
from typing import Protocol

from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID, PYNETDICOM_IMPLEMENTATION_VERSION
from pynetdicom.dimse import DIMSEServiceProvider
from pynetdicom.pdu_primitives import P_DATA

LOGGER = logging.getLogger(__name__)

C_STORE_RQ, C_STORE_RSP = 0x0001, 0x8001
NO_DATASET = 0x0101

AFFECTED_SOP_CLASS = 0x00000002
COMMAND_FIELD = 0x00000100
MESSAGE_ID = 0x00000110
DATASET_TYPE = 0x00000800
AFFECTED_SOP_INSTANCE = 0x00001000
MOVE_ORIGINATOR_AET = 0x00001030
MOVE_ORIGINATOR_ID = 0x00001031

_ELEMENT = struct.Struct("<HHI")


@dataclass(frozen=True)
class StoreCommand:
    """The fields of a C-STORE-RQ command set (UIDs as sent: not yet validated)."""

    message_id: int
    sop_class: str
    sop_instance: str
    move_originator_aet: str | None
    move_originator_id: int | None


class StoreTicket(Protocol):
    """Where one received instance goes: its bytes (a Part 10 file) are written in
    order, then `end()` gives the C-STORE status to answer."""

    def write(self, data) -> None: ...

    def end(self, complete: bool) -> int: ...


def parse_command(data) -> dict[int, bytes]:
    """Elements of an implicit VR little endian command set (group 0000)."""
    out: dict[int, bytes] = {}
    pos, end = 0, len(data)
    while pos + 8 <= end:
        group, elem, length = _ELEMENT.unpack_from(data, pos)
        if pos + 8 + length > end:
            raise ValueError("command element runs past the command set")
        out[(group << 16) | elem] = bytes(data[pos + 8:pos + 8 + length])
        pos += 8 + length
    if pos != end:
        raise ValueError("trailing bytes after the command set")
    return out


def _us(value: bytes | None) -> int | None:
    return struct.unpack("<H", value[:2])[0] if value and len(value) >= 2 else None


def _text(value: bytes | None) -> str:
    return (value or b"").decode("ascii", "replace").rstrip("\x00 ").strip()


def store_command(fields: dict[int, bytes]) -> StoreCommand:
    return StoreCommand(_us(fields.get(MESSAGE_ID)) or 0, _text(fields.get(AFFECTED_SOP_CLASS)),
                        _text(fields.get(AFFECTED_SOP_INSTANCE)),
                        _text(fields.get(MOVE_ORIGINATOR_AET)) or None,
                        _us(fields.get(MOVE_ORIGINATOR_ID)))


def _even(raw: bytes, pad: bytes) -> bytes:
    return raw + pad if len(raw) % 2 else raw


def _implicit(tag: int, value: bytes) -> bytes:
    return _ELEMENT.pack(tag >> 16, tag & 0xFFFF, len(value)) + value


def store_response(command: StoreCommand, status: int) -> bytes:
    """A C-STORE-RSP command set, implicit VR little endian with its group length."""
    body = b"".join((
        _implicit(AFFECTED_SOP_CLASS, _even(command.sop_class.encode("ascii", "replace"), b"\0")),
        _implicit(COMMAND_FIELD, struct.pack("<H", C_STORE_RSP)),
        _implicit(0x00000120, struct.pack("<H", command.message_id)),
        _implicit(DATASET_TYPE, struct.pack("<H", NO_DATASET)),
        _implicit(0x00000900, struct.pack("<H", status)),
        _implicit(AFFECTED_SOP_INSTANCE,
                  _even(command.sop_instance.encode("ascii", "replace"), b"\0")),
    ))
    return _implicit(0x00000000, struct.pack("<I", len(body))) + body


def _explicit(tag: int, vr: bytes, value: bytes) -> bytes:
    group, elem = tag >> 16, tag & 0xFFFF
    if vr in (b"OB", b"OW", b"UN", b"SQ", b"UT"):
        return struct.pack("<HH2sHI", group, elem, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", group, elem, vr, len(value)) + value


def file_head(command: StoreCommand, transfer_syntax: str) -> bytes:
    """Preamble (zeros), "DICM" and the file meta group for the received data set."""
    uid = lambda s: _even(s.encode("ascii", "replace"), b"\0")  # noqa: E731
    body = b"".join((
        _explicit(0x00020001, b"OB", b"\x00\x01"),
        _explicit(0x00020002, b"UI", uid(command.sop_class)),
        _explicit(0x00020003, b"UI", uid(command.sop_instance)),
        _explicit(0x00020010, b"UI", uid(transfer_syntax)),
        _explicit(0x00020012, b"UI", uid(str(PYNETDICOM_IMPLEMENTATION_UID))),
        _explicit(0x00020013, b"SH", _even(PYNETDICOM_IMPLEMENTATION_VERSION.encode(), b" ")),
    ))
    return bytes(128) + b"DICM" + _explicit(0x00020000, b"UL", struct.pack("<I", len(body))) + body


class _Incoming:
    """A C-STORE data set being received."""

    def __init__(self, context_id: int, command: StoreCommand, ticket, head: bytes):
        self.context_id = context_id
        self.command = command
        self.ticket = ticket  # a StoreTicket, or an int status (refused: drop the data)
        if not isinstance(ticket, int):
            ticket.write(head)

    def write(self, data) -> None:
        if not isinstance(self.ticket, int):
            self.ticket.write(data)

    def finish(self, complete: bool) -> int:
        if isinstance(self.ticket, int):
            return self.ticket
        return self.ticket.end(complete)


class FastDIMSE(DIMSEServiceProvider):
    """DIMSE provider that receives C-STORE requests itself (see the module docs)."""

    def __init__(self, assoc) -> None:
        super().__init__(assoc)
        self._incoming: _Incoming | None = None

    def receive_primitive(self, primitive) -> None:
        begin = getattr(self.assoc, "store_begin", None)
        pdvs = primitive.presentation_data_value_list
        if self._incoming is None and (begin is None or self.message is not None or not pdvs):
            return super().receive_primitive(primitive)
        index = 0
        if self._incoming is None:
            context_id, data = pdvs[0]
            if data[0] & 3 != 3:  # not a whole command set in one fragment
                return super().receive_primitive(primitive)
            try:
                fields = parse_command(data[1:])
            except ValueError:
                return super().receive_primitive(primitive)  # let pynetdicom refuse it
            if _us(fields.get(COMMAND_FIELD)) != C_STORE_RQ or \
                    _us(fields.get(DATASET_TYPE)) == NO_DATASET:
                return super().receive_primitive(primitive)
            self._start(context_id, store_command(fields), begin)
            index = 1
        for context_id, data in pdvs[index:]:
            incoming = self._incoming
            if incoming is None or data[0] & 1 or context_id != incoming.context_id:
                LOGGER.error("unexpected PDV inside a C-STORE data set: aborting")
                self.drop()
                self.dul.event_queue.put("Evt19")  # invalid PDU: A-ABORT
                return
            incoming.write(memoryview(data)[1:])
            if data[0] & 2:
                self._incoming = None
                try:
                    status = incoming.finish(True)
                except Exception:
                    LOGGER.exception("storing a received instance failed")
                    status = 0xC211
                self._respond(incoming, status)

    def _start(self, context_id: int, command: StoreCommand, begin) -> None:
        cx = self.assoc._accepted_cx.get(context_id)
        if cx is None:
            ticket, syntax = 0x0122, ""  # no such accepted context: SOP class not supported
        else:
            syntax = str(cx.transfer_syntax[0])
            try:
                ticket = begin(self.assoc, context_id, command)
            except Exception:
                LOGGER.exception("store_begin failed")
                ticket = 0xC211
        self._incoming = _Incoming(context_id, command, ticket,
                                   file_head(command, syntax) if syntax else b"")

    def _respond(self, incoming: _Incoming, status: int) -> None:
        pdata = P_DATA()
        pdata.presentation_data_value_list = [
            [incoming.context_id, b"\x03" + store_response(incoming.command, status)]]
        self.dul.send_pdu(pdata)

    def drop(self) -> None:
        """The association ended (or broke) mid-instance: the instance is lost."""
        incoming, self._incoming = self._incoming, None
        if incoming is not None:
            try:
                incoming.finish(False)
            except Exception:
                LOGGER.exception("ending a cut-off C-STORE failed")
