"""Encoding flat answer datasets (C-FIND identifiers), PS3.5 7.1.

C-FIND answers are flat: text values, a few counts and no sequences, in
ASCII or UTF-8 (index/query.py adds Specific Character Set "ISO_IR 192"
when a value is not ASCII). pydicom's ``write_dataset`` spends about half a
millisecond on each such answer, most of a C-FIND's CPU time when a patient
has several studies; :func:`encode_flat` writes the same bytes in a few tens
of microseconds. Anything else (sequences, other character sets, binary VRs
other than US/UL, big endian) goes to pydicom, and tests/test_find.py checks
that both give identical bytes.
"""

from __future__ import annotations

import struct

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID

# Text VRs (PS3.5 6.2) and the ones among them (and all) with a 4-byte length in explicit VR (7.1.2).
_TEXT = frozenset({"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "LT", "PN", "SH", "ST", "TM", "UC", "UI", "UR", "UT"})
_LONG = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "UC", "UN", "UR", "UT"})
_BINARY = {"US": "<H", "UL": "<I"}
_MULTI = (list, tuple, MultiValue)
_CHARSETS = {None: "ascii", "": "ascii", "ISO_IR 6": "ascii", "ISO_IR 192": "utf-8"}


class _NotFlat(Exception):
    """The dataset needs pydicom's writer."""


def encode_dataset(ds: Dataset, transfer_syntax: UID) -> bytes:
    """``ds`` encoded in an uncompressed ``transfer_syntax``, without File Meta."""
    if transfer_syntax.is_little_endian:
        try:
            return encode_flat(ds, implicit=transfer_syntax.is_implicit_VR)
        except _NotFlat:
            pass
    buffer = DicomBytesIO()
    buffer.is_implicit_VR = transfer_syntax.is_implicit_VR
    buffer.is_little_endian = transfer_syntax.is_little_endian
    write_dataset(buffer, ds)
    return buffer.getvalue()


def _value_bytes(vr: str, value: object, codec: str) -> bytes:
    if value is None:
        return b""
    if vr in _BINARY:
        values = value if isinstance(value, _MULTI) else [value]
        if not all(isinstance(v, int) for v in values):
            raise _NotFlat
        return b"".join(struct.pack(_BINARY[vr], v) for v in values)
    if vr not in _TEXT:
        raise _NotFlat
    if isinstance(value, _MULTI):
        text = "\\".join("" if v is None else str(v) for v in value)
    else:
        text = str(value)
    try:
        data = text.encode(codec)
    except UnicodeEncodeError:
        raise _NotFlat from None
    if len(data) % 2:
        data += b"\0" if vr == "UI" else b" "
    return data


def encode_flat(ds: Dataset, *, implicit: bool) -> bytes:
    """A flat little-endian dataset's bytes (raises _NotFlat otherwise)."""
    charset = ds.get("SpecificCharacterSet")
    codec = _CHARSETS.get(charset) if charset is None or isinstance(charset, str) else None
    if codec is None:
        raise _NotFlat
    out = bytearray()
    for tag in sorted(ds.keys()):
        elem = ds[tag]
        vr = elem.VR
        data = _value_bytes(vr, elem.value, codec)
        group, number = tag >> 16, tag & 0xFFFF
        if implicit:
            out += struct.pack("<HHI", group, number, len(data))
        elif vr in _LONG:
            out += struct.pack("<HH2sHI", group, number, vr.encode(), 0, len(data))
        else:
            if len(data) > 0xFFFF:
                raise _NotFlat
            out += struct.pack("<HH2sH", group, number, vr.encode(), len(data))
        out += data
    return bytes(out)
