"""A structural check of a DICOM Part 10 file, without decoding values.

pydicom reads a truncated file without complaint (it stops where the bytes
stop), so every element's length is checked against the file here, walking
nested sequences and encapsulated pixel data (PS3.5 section 7.1, 7.5 and
A.4). The walk also yields the byte spans of the top-level elements, from
which the archive keeps a compact copy of the header (all but bulk data).
"""

from __future__ import annotations

import mmap
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"}
# explicit VRs with a 2-byte length (PS3.5 7.1.2): most elements, read on a fast path
_SHORT_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FD", b"FL", b"IS", b"LO", b"LT", b"PN",
                        b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})  # fmt: skip
_UNDEFINED = 0xFFFFFFFF
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
PIXEL_DATA = 0x7FE00010
BULK_THRESHOLD = 65536  # larger elements stay out of the header copy


class MalformedDataset(ValueError):
    """The bytes are not a well-formed DICOM dataset."""


@dataclass
class Layout:
    """Where things are in a Part 10 file."""

    transfer_syntax_uid: str
    dataset_offset: int
    size: int
    # (tag, start, end) of each top-level element of the dataset, in order
    spans: list[tuple[int, int, int]] = field(default_factory=list)
    # how the data set is really encoded (some writers label implicit VR as explicit)
    explicit_vr: bool = True


class _Walker:
    def __init__(self, buf: mmap.mmap | bytes, explicit: bool, little: bool) -> None:
        self.buf = buf
        self.explicit = explicit
        order = "<" if little else ">"
        self.tag_length = struct.Struct(order + "HHL")  # implicit VR, items, delimiters
        self.tag_vr_short = struct.Struct(order + "HH2sH")  # explicit VR, 2-byte length
        self.long_length = struct.Struct(order + "L")

    def _item_header(self, pos: int) -> tuple[int, int, int]:
        """(group, element, length) of an item or delimiter at ``pos``."""
        if pos + 8 > len(self.buf):
            raise MalformedDataset(f"dataset truncated at byte {pos}")
        return self.tag_length.unpack_from(self.buf, pos)

    def element(self, pos: int, end: int, explicit: bool) -> tuple[int, int]:
        """Parse one element header at ``pos``; return (tag, position after element)."""
        if pos + 8 > end:
            raise MalformedDataset(f"dataset truncated at byte {pos}")
        if explicit:
            group, elem, vr, length = self.tag_vr_short.unpack_from(self.buf, pos)
            if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
                raise MalformedDataset(f"invalid VR {vr!r} at byte {pos}")
            if vr in _LONG_VRS:
                if pos + 12 > end:
                    raise MalformedDataset(f"dataset truncated at byte {pos}")
                (length,) = self.long_length.unpack_from(self.buf, pos + 8)
                pos += 12
            else:
                pos += 8
        else:
            group, elem, length = self.tag_length.unpack_from(self.buf, pos)
            vr = b""
            pos += 8
        tag = (group << 16) | elem
        if group == 0xFFFE:
            raise MalformedDataset(f"unexpected delimiter at byte {pos - 8}")
        if length == _UNDEFINED:
            if explicit and vr not in (b"SQ", b"UN", b"OB", b"OW"):
                raise MalformedDataset(f"undefined length for VR {vr!r} at byte {pos}")
            # PS3.5 6.2.2: an undefined-length UN holds implicit VR items
            return tag, self.sequence(pos, end, explicit and vr != b"UN")
        if pos + length > end:
            raise MalformedDataset(
                f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) runs past the end of the data"
            )
        return tag, pos + length

    def sequence(self, pos: int, end: int, explicit: bool) -> int:
        """Walk items up to the sequence delimiter; return the position after it."""
        while True:
            group, elem, length = self._item_header(pos)
            tag = (group << 16) | elem
            pos += 8
            if tag == _SEQ_END:
                return pos
            if tag != _ITEM:
                raise MalformedDataset(f"expected an item at byte {pos - 8}")
            if length == _UNDEFINED:
                pos = self.dataset(pos, end, explicit, until_item_end=True)
            elif pos + length > end:
                raise MalformedDataset(f"item runs past the end of the data at byte {pos}")
            else:
                pos += length

    def dataset(self, pos: int, end: int, explicit: bool, until_item_end: bool = False) -> int:
        while pos < end:
            if until_item_end:
                group, elem, _length = self._item_header(pos)
                if (group << 16) | elem == _ITEM_END:
                    return pos + 8
            _tag, pos = self.element(pos, end, explicit)
        if until_item_end:
            raise MalformedDataset("item not terminated before the end of the data")
        return pos

    def top_level(self, pos: int, end: int) -> list[tuple[int, int, int]]:
        # Some writers label implicit VR data as explicit; read it as it is
        # encoded, as pydicom and DCMTK do.
        if self.explicit and pos + 6 <= end:
            vr = bytes(self.buf[pos + 4 : pos + 6])
            self.explicit = 65 <= vr[0] <= 90 and 65 <= vr[1] <= 90
        spans: list[tuple[int, int, int]] = []
        append, buf, explicit = spans.append, self.buf, self.explicit
        short = self.tag_vr_short.unpack_from
        while pos < end:
            start = pos
            if explicit and pos + 8 <= end:  # the common case inline: a short explicit VR element
                group, elem, vr, length = short(buf, pos)
                if vr in _SHORT_VRS and group != 0xFFFE and pos + 8 + length <= end:
                    pos += 8 + length
                    append(((group << 16) | elem, start, pos))
                    continue
            tag, pos = self.element(pos, end, explicit)
            append((tag, start, pos))
        return spans


def _meta(buf: mmap.mmap | bytes) -> tuple[str, int]:
    """Transfer syntax and the offset of the dataset after the File Meta group."""
    if len(buf) < 132 or buf[128:132] != b"DICM":
        raise MalformedDataset("not a DICOM Part 10 file (no DICM prefix)")
    walker = _Walker(buf, explicit=True, little=True)
    pos, ts = 132, None
    while pos + 4 <= len(buf):
        (group,) = struct.unpack_from("<H", buf, pos)
        if group != 0x0002:
            break
        start = pos
        tag, pos = walker.element(pos, len(buf), True)
        if tag == 0x00020010:
            header = 12 if bytes(buf[start + 4 : start + 6]) in _LONG_VRS else 8
            ts = bytes(buf[start + header : pos]).rstrip(b"\x00 ").decode("ascii", "replace")
    if not ts:
        raise MalformedDataset("File Meta Information has no Transfer Syntax UID")
    return ts, pos


def dataset_offset(stream: BinaryIO) -> int:
    """Where the data set of the Part 10 file open in ``stream`` begins."""
    stream.seek(0)
    return _meta(stream.read(1 << 16))[1]


def inspect_file(path: Path) -> Layout:
    """Check the structure of the Part 10 file at ``path`` and map its elements."""
    with open(path, "rb") as f:
        size = f.seek(0, 2)
        if size == 0:
            raise MalformedDataset("empty file")
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            return inspect_buffer(buf)


def inspect_buffer(buf: mmap.mmap | bytes) -> Layout:
    """Check the structure of a Part 10 file held in ``buf`` and map its elements."""
    size = len(buf)
    if size == 0:
        raise MalformedDataset("empty file")
    ts, offset = _meta(buf)
    layout = Layout(ts, offset, size)
    if ts == DeflatedExplicitVRLittleEndian:
        _check_deflate(buf, offset)
        return layout
    walker = _Walker(buf, explicit=ts != ImplicitVRLittleEndian, little=ts != ExplicitVRBigEndian)
    layout.spans = walker.top_level(offset, size)
    layout.explicit_vr = walker.explicit
    return layout


def _check_deflate(buf: mmap.mmap | bytes, offset: int) -> None:
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        for start in range(offset, len(buf), 1 << 20):
            pending = buf[start : start + (1 << 20)]
            while pending and not inflater.eof:
                inflater.decompress(pending, 1 << 20)  # bounded output per call
                pending = inflater.unconsumed_tail
            if inflater.eof:
                break
    except zlib.error as exc:
        raise MalformedDataset(f"deflated dataset is corrupt: {exc}") from None
    if not inflater.eof:
        raise MalformedDataset("deflated dataset is truncated")


def header_bytes(path: Path, layout: Layout) -> bytes | None:
    """The file with its bulk data elements left out: a compact, parseable header."""
    if not layout.spans:
        return None
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        return header_of_buffer(buf, layout)


def header_of_buffer(buf: mmap.mmap | bytes, layout: Layout) -> bytes | None:
    """:func:`header_bytes` of a file held in ``buf``.

    Left out: Pixel Data, and elements over 64 KiB other than sequences
    (sequences are metadata, e.g. per-frame functional groups, and are kept
    whole). The elements left out are named in a trailing private element
    (:data:`OMITTED_GROUP`), so WADO-RS metadata can announce them as bulk data
    without opening the object.
    """
    if not layout.spans:
        return None
    parts: list[bytes] = []
    omitted: list[str] = []
    trace_at = None  # the trace goes before any element of a group >= OMITTED_GROUP
    traced = False  # the data holds such a trace already
    run = 0  # the kept bytes are copied in contiguous runs, not element by element
    for tag, start, end in layout.spans:
        if tag >> 16 >= OMITTED_GROUP:
            traced = traced or tag >> 16 == OMITTED_GROUP
            if trace_at is None:
                parts.append(buf[run:start])
                run = start
                trace_at = len(parts)
        if tag == PIXEL_DATA or end - start > BULK_THRESHOLD:
            vr = _vr_at(buf, layout, tag, start)
            if tag == PIXEL_DATA or vr != "SQ":
                omitted.append(f"{tag:08X}:{vr if len(vr) == 2 else ''}:{end - start}")
                parts.append(buf[run:start])
                run = end
    parts.append(buf[run : layout.spans[-1][2]])
    if omitted and not traced:
        parts.insert(len(parts) if trace_at is None else trace_at, _omitted_trace(layout, omitted))
    return b"".join(parts)


# The trailing private element naming what the header copy left out:
# (FFFB,0010) LO creator, (FFFB,1000) UT "TTTTTTTT:VR:LENGTH ..." (VR empty when
# implicit VR data leaves it to the dictionary; LENGTH is the element's bytes).
OMITTED_GROUP = 0xFFFB
OMITTED_CREATOR = "SAMARKIV OMITTED"
OMITTED_ELEMENT = 0x1000


def _vr_at(buf: mmap.mmap | bytes, layout: Layout, tag: int, start: int) -> str:
    """The VR of the top-level element at ``start``, as encoded or from the dictionary."""
    if layout.explicit_vr:
        return bytes(buf[start + 4 : start + 6]).decode("ascii", "replace")
    if struct.unpack_from("<L", buf, start + 4)[0] == _UNDEFINED:
        return "SQ"  # implicit VR: only sequences have undefined length
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(tag)
    except KeyError:
        return ""


def _omitted_trace(layout: Layout, records: list[str]) -> bytes:
    order = ">" if layout.transfer_syntax_uid == ExplicitVRBigEndian else "<"
    text = " ".join(records).encode("ascii")
    text += b" " * (len(text) % 2)

    def element(elem: int, vr: bytes, value: bytes) -> bytes:
        if not layout.explicit_vr:
            return struct.pack(order + "HHL", OMITTED_GROUP, elem, len(value)) + value
        if vr in _LONG_VRS:
            return struct.pack(order + "HH2sHL", OMITTED_GROUP, elem, vr, 0, len(value)) + value
        return struct.pack(order + "HH2sH", OMITTED_GROUP, elem, vr, len(value)) + value

    return element(0x0010, b"LO", OMITTED_CREATOR.encode("ascii")) + element(OMITTED_ELEMENT, b"UT", text)
