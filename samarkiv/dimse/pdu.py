"""Just enough of the DICOM Upper Layer (PS3.8 section 9) and DIMSE command
encoding (PS3.7 section 6.3, 9.3.1, 9.3.5) for storage associations.

Why our own: pynetdicom polls its sockets and queues with 1 ms sleeps, which
caps one association at about 325 C-STOREs/s even with a handler that does
nothing (measured here); modalities send over one association, so that latency
is the archive's ingest rate. This codec serves only associations that propose
nothing but Verification and Storage; everything else goes to pynetdicom.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field

A_ASSOCIATE_RQ, A_ASSOCIATE_AC, A_ASSOCIATE_RJ = 0x01, 0x02, 0x03
P_DATA_TF, A_RELEASE_RQ, A_RELEASE_RP, A_ABORT = 0x04, 0x05, 0x06, 0x07

APPLICATION_CONTEXT = "1.2.840.10008.3.1.1.1"
IMPLEMENTATION_CLASS_UID = "2.25.166233545130411677878887932767301946000"  # a UUID-derived UID (PS3.5 B.2)
IMPLEMENTATION_VERSION = "SAMARKIV_010"

# PS3.8 Table 9-18: presentation context results
ACCEPTED, ABSTRACT_SYNTAX_NOT_SUPPORTED, TRANSFER_SYNTAXES_NOT_SUPPORTED = 0, 3, 4


class ProtocolError(Exception):
    """The peer broke the Upper Layer protocol: abort the association."""


def _uid(raw: bytes) -> str:
    return raw.rstrip(b"\x00 ").decode("ascii", "replace")


def _ae(raw: bytes) -> str:
    return raw.decode("ascii", "replace").strip()


@dataclass
class ProposedContext:
    context_id: int
    abstract_syntax: str
    transfer_syntaxes: list[str]


@dataclass
class AssociateRequest:
    """A-ASSOCIATE-RQ (PS3.8 9.3.2)."""

    called_ae: str
    calling_ae: str
    application_context: str
    contexts: list[ProposedContext] = field(default_factory=list)
    max_pdu_length: int = 0
    implementation_class_uid: str = ""
    # SOP Class UID -> (SCU role, SCP role) proposed (PS3.7 D.3.3.4)
    roles: dict[str, tuple[int, int]] = field(default_factory=dict)
    has_user_identity: bool = False
    has_extended_negotiation: bool = False


def parse_associate_rq(body: bytes) -> AssociateRequest:
    """Decode the body (after the 6-byte PDU header) of an A-ASSOCIATE-RQ."""
    if len(body) < 68:
        raise ProtocolError("A-ASSOCIATE-RQ too short")
    rq = AssociateRequest(_ae(body[4:20]), _ae(body[20:36]), "")
    pos = 68
    while pos + 4 <= len(body):
        item_type, length = body[pos], struct.unpack_from(">H", body, pos + 2)[0]
        value = body[pos + 4 : pos + 4 + length]
        pos += 4 + length
        if item_type == 0x10:
            rq.application_context = _uid(value)
        elif item_type == 0x20:
            rq.contexts.append(_parse_context(value))
        elif item_type == 0x50:
            _parse_user_info(value, rq)
    if pos != len(body):
        raise ProtocolError("malformed A-ASSOCIATE-RQ items")
    return rq


def _parse_context(value: bytes) -> ProposedContext:
    context = ProposedContext(value[0], "", [])
    pos = 4
    while pos + 4 <= len(value):
        sub_type, length = value[pos], struct.unpack_from(">H", value, pos + 2)[0]
        uid = _uid(value[pos + 4 : pos + 4 + length])
        if sub_type == 0x30:
            context.abstract_syntax = uid
        elif sub_type == 0x40:
            context.transfer_syntaxes.append(uid)
        pos += 4 + length
    return context


def _parse_user_info(value: bytes, rq: AssociateRequest) -> None:
    pos = 0
    while pos + 4 <= len(value):
        sub_type, length = value[pos], struct.unpack_from(">H", value, pos + 2)[0]
        data = value[pos + 4 : pos + 4 + length]
        if sub_type == 0x51 and length == 4:
            rq.max_pdu_length = struct.unpack(">I", data)[0]
        elif sub_type == 0x52:
            rq.implementation_class_uid = _uid(data)
        elif sub_type == 0x54 and length >= 4:
            (uid_length,) = struct.unpack_from(">H", data, 0)
            if uid_length + 4 <= length:
                uid = _uid(data[2 : 2 + uid_length])
                rq.roles[uid] = (data[2 + uid_length], data[3 + uid_length])
        elif sub_type in (0x56, 0x57):
            rq.has_extended_negotiation = True
        elif sub_type == 0x58:
            rq.has_user_identity = True
        pos += 4 + length


def _ascii(text: str) -> bytes:
    return text.encode("ascii")  # UIDs in UL items are not padded (PS3.8 9.3.2.2.1)


def _item(item_type: int, value: bytes) -> bytes:
    return struct.pack(">BBH", item_type, 0, len(value)) + value


def _pdu(pdu_type: int, body: bytes) -> bytes:
    return struct.pack(">BBI", pdu_type, 0, len(body)) + body


def encode_associate_ac(
    rq: AssociateRequest, results: list[tuple[int, int, str]], max_pdu_length: int
) -> bytes:
    """A-ASSOCIATE-AC (PS3.8 9.3.3); ``results`` are (context id, result, transfer syntax)."""
    body = struct.pack(">HH", 1, 0)
    body += rq.called_ae.encode("ascii").ljust(16) + rq.calling_ae.encode("ascii").ljust(16)
    body += b"\x00" * 32
    body += _item(0x10, _ascii(APPLICATION_CONTEXT))
    for context_id, result, ts in results:
        sub = _item(0x40, _ascii(ts)) if result == ACCEPTED else _item(0x40, b"")
        body += _item(0x21, bytes([context_id, 0, result, 0]) + sub)
    user = _item(0x51, struct.pack(">I", max_pdu_length))
    user += _item(0x52, _ascii(IMPLEMENTATION_CLASS_UID))
    for uid, (scu, scp) in rq.roles.items():  # accept the roles as proposed
        user += _item(0x54, struct.pack(">H", len(uid)) + _ascii(uid) + bytes([scu, scp]))
    user += _item(0x55, IMPLEMENTATION_VERSION.encode("ascii"))
    body += _item(0x50, user)
    return _pdu(A_ASSOCIATE_AC, body)


def encode_associate_rj(result: int, source: int, reason: int) -> bytes:
    """A-ASSOCIATE-RJ (PS3.8 9.3.4, Table 9-21)."""
    return _pdu(A_ASSOCIATE_RJ, bytes([0, result, source, reason]))


def encode_release_rp() -> bytes:
    return _pdu(A_RELEASE_RP, b"\x00" * 4)


def encode_abort(source: int = 2, reason: int = 0) -> bytes:
    """A-ABORT (PS3.8 9.3.8): source 2 = service provider."""
    return _pdu(A_ABORT, bytes([0, 0, source, reason]))


def encode_pdata(context_id: int, payload: bytes, *, command: bool, last: bool) -> bytes:
    """One P-DATA-TF with one PDV (PS3.8 9.3.5, Annex E.2)."""
    header = (1 if command else 0) | (2 if last else 0)
    pdv = struct.pack(">IBB", len(payload) + 2, context_id, header) + payload
    return _pdu(P_DATA_TF, pdv)


class PeerClosed(ConnectionError):
    """The peer closed the connection before the bytes awaited came."""


def recv_exact(sock: socket.socket, size: int) -> bytearray:
    """``size`` bytes from ``sock``, received straight into one buffer (no chunks joined);
    PeerClosed if the peer closes first. Each wait is bounded by the socket's timeout."""
    buf = bytearray(size)
    view = memoryview(buf)
    got = 0
    while got < size:
        n = sock.recv_into(view[got:], size - got)
        if n == 0:
            raise PeerClosed("peer closed the connection")
        got += n
    return buf


def iter_pdvs(body: bytes) -> list[tuple[int, int, memoryview]]:
    """(context id, message control header, data) of each PDV in a P-DATA-TF body."""
    view = memoryview(body)
    pdvs = []
    pos = 0
    while pos < len(body):
        if pos + 6 > len(body):
            raise ProtocolError("truncated PDV")
        (length,) = struct.unpack_from(">I", body, pos)
        if length < 2 or pos + 4 + length > len(body):
            raise ProtocolError("PDV length exceeds the PDU")
        pdvs.append((body[pos + 4], body[pos + 5], view[pos + 6 : pos + 4 + length]))
        pos += 4 + length
    return pdvs


# --- DIMSE command sets: implicit VR little endian, group 0000 (PS3.7 E.1) ---

C_STORE_RQ, C_STORE_RSP, C_ECHO_RQ, C_ECHO_RSP = 0x0001, 0x8001, 0x0030, 0x8030
C_GET_RQ, C_GET_RSP, C_FIND_RQ, C_FIND_RSP, C_CANCEL_RQ = 0x0010, 0x8010, 0x0020, 0x8020, 0x0FFF
NO_DATASET, DATASET_PRESENT = 0x0101, 0x0000

# Command elements (group 0000) by element number (PS3.7 Table E.1-1)
AFFECTED_SOP_CLASS, COMMAND_FIELD, MESSAGE_ID, RESPONDED_TO = 0x0002, 0x0100, 0x0110, 0x0120
PRIORITY, DATASET_TYPE, STATUS, OFFENDING_ELEMENT, ERROR_COMMENT = 0x0700, 0x0800, 0x0900, 0x0901, 0x0902
AFFECTED_SOP_INSTANCE = 0x1000
MOVE_ORIGINATOR = 0x1030  # Move Originator Application Entity Title (PS3.7 9.1.1.1.9)
REMAINING, COMPLETED, FAILED, WARNING = 0x1020, 0x1021, 0x1022, 0x1023

_UI_TAGS = {AFFECTED_SOP_CLASS, AFFECTED_SOP_INSTANCE, 0x1001, MOVE_ORIGINATOR}
_TEXT_TAGS = _UI_TAGS | {ERROR_COMMENT}
_US_TAGS = {COMMAND_FIELD, MESSAGE_ID, RESPONDED_TO, PRIORITY, DATASET_TYPE, STATUS, 0x1031,
            REMAINING, COMPLETED, FAILED, WARNING}  # fmt: skip


def decode_command(data: bytes) -> dict[int, int | str]:
    """Element number -> value for a command set (group 0000 only)."""
    values: dict[int, int | str] = {}
    pos = 0
    while pos + 8 <= len(data):
        group, element, length = struct.unpack_from("<HHI", data, pos)
        raw = data[pos + 8 : pos + 8 + length]
        pos += 8 + length
        if group != 0:
            raise ProtocolError("command set contains a non-command element")
        if element in _US_TAGS and length == 2:
            values[element] = struct.unpack("<H", raw)[0]
        elif element in _TEXT_TAGS:
            values[element] = _uid(bytes(raw))
    if pos != len(data):
        raise ProtocolError("truncated command set")
    return values


def encode_command(elements: dict[int, int | str | list[int] | None]) -> bytes:
    """A command set from element number -> value; None values are left out."""
    body = b""
    for element in sorted(elements):
        value = elements[element]
        if value is None:
            continue
        if element == OFFENDING_ELEMENT:  # AT: (group, element) pairs
            tags = b"".join(struct.pack("<HH", int(t) >> 16, int(t) & 0xFFFF) for t in value)  # type: ignore[union-attr]
            body += struct.pack("<HHI", 0, element, len(tags)) + tags
        elif element in _US_TAGS:
            body += struct.pack("<HHIH", 0, element, 2, int(value))  # type: ignore[arg-type]
        else:
            raw = str(value)[:64].encode("ascii", "replace")
            if len(raw) % 2:
                raw += b"\x00" if element in _UI_TAGS else b" "
            body += struct.pack("<HHI", 0, element, len(raw)) + raw
    return struct.pack("<HHII", 0, 0, 4, len(body)) + body


def encode_response(
    command_field: int,
    message_id: int,
    status: int,
    sop_class_uid: str,
    sop_instance_uid: str | None = None,
    error_comment: str | None = None,
) -> bytes:
    """A C-STORE-RSP or C-ECHO-RSP command set (PS3.7 9.3.1.2, 9.3.5.2)."""
    return encode_command(
        {
            AFFECTED_SOP_CLASS: sop_class_uid,
            COMMAND_FIELD: command_field,
            RESPONDED_TO: message_id,
            DATASET_TYPE: NO_DATASET,
            STATUS: status,
            ERROR_COMMENT: error_comment or None,
            AFFECTED_SOP_INSTANCE: sop_instance_uid,
        }
    )


# --- File Meta Information (PS3.10 7.1) ---------------------------------------


def _meta_element(group_element: tuple[int, int], vr: bytes, value: bytes) -> bytes:
    if vr == b"OB":
        return struct.pack("<HH2sHI", *group_element, vr, 0, len(value)) + value
    return struct.pack("<HH2sH", *group_element, vr, len(value)) + value


def _padded(text: str, pad: bytes) -> bytes:
    raw = text.encode("ascii")
    return raw + pad if len(raw) % 2 else raw


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax: str, source_aet: str) -> bytes:
    """Preamble, prefix and File Meta Information group for a received dataset."""
    elements = b"".join(
        [
            _meta_element((2, 0x0001), b"OB", b"\x00\x01"),
            _meta_element((2, 0x0002), b"UI", _padded(sop_class_uid, b"\x00")),
            _meta_element((2, 0x0003), b"UI", _padded(sop_instance_uid, b"\x00")),
            _meta_element((2, 0x0010), b"UI", _padded(transfer_syntax, b"\x00")),
            _meta_element((2, 0x0012), b"UI", _padded(IMPLEMENTATION_CLASS_UID, b"\x00")),
            _meta_element((2, 0x0013), b"SH", _padded(IMPLEMENTATION_VERSION, b" ")),
            _meta_element((2, 0x0016), b"AE", _padded(source_aet or "UNKNOWN", b" ")),
        ]
    )
    group_length = _meta_element((2, 0x0000), b"UL", struct.pack("<I", len(elements)))
    return b"\x00" * 128 + b"DICM" + group_length + elements
