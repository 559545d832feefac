"""Frames and bulk data read from stored Part 10 bytes, without loading the file.

The header is parsed up to the Pixel Data element (values over 1 MiB are left
on disk); from there on only what a request needs is read: one native frame
at its offset (PS3.5 8.1.1), or the fragments of one encapsulated frame,
found through the Extended Offset Table, the Basic Offset Table, or the
fragment items themselves (PS3.5 A.4). Deflated objects (PS3.5 A.5) are the
exception: they are inflated in memory first.
"""

from __future__ import annotations

import io
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.datadict import dictionary_VR
from pydicom.encaps import encapsulate, get_frame
from pydicom.filereader import data_element_generator
from pydicom.pixels import as_pixel_options, get_decoder
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    UID,
)

from .accept import NATIVE_TRANSFER_SYNTAXES

PIXEL_DATA = 0x7FE00010
_ITEM, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE0DD
_LONG_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "SQ", "SV", "UC", "UN", "UR", "UT", "UV"}
_DEFER = 1 << 20  # header values larger than this stay on disk
_CHUNK = 1 << 20


class FrameError(ValueError):
    """The object has no such frame or element, or its pixel data is unusable."""


@dataclass(frozen=True)
class ElementLocation:
    """Where a top-level element's value is in the stored bytes."""

    tag: int
    vr: str
    offset: int
    length: int | None  # None: undefined length (encapsulated pixel data)


@dataclass
class StoredObject:
    """An open stored instance: its header and where its pixel data lies."""

    stream: BinaryIO
    transfer_syntax: UID
    dataset: Dataset  # every element before the pixel data
    pixel_data: ElementLocation | None
    _fragments: list[tuple[int, int]] | None = field(default=None, repr=False)
    _basic_offsets: list[int] | None = field(default=None, repr=False)

    @property
    def encapsulated(self) -> bool:
        return self.pixel_data is not None and self.pixel_data.length is None

    @property
    def number_of_frames(self) -> int:
        if self.pixel_data is None:
            return 0
        try:
            return max(1, int(self.dataset.get("NumberOfFrames") or 1))
        except (TypeError, ValueError):
            return 1

    # --- native -------------------------------------------------------------------

    def _frame_bits(self) -> int:
        ds = self.dataset
        try:
            samples = int(ds.get("SamplesPerPixel", 1) or 1)
            if ds.get("PhotometricInterpretation") == "YBR_FULL_422" and not self.encapsulated:
                samples = 2  # PS3.3 C.7.6.3.1.2: two chroma samples per pair of pixels
            return int(ds.Rows) * int(ds.Columns) * samples * int(ds.BitsAllocated)
        except (AttributeError, TypeError, ValueError):
            raise FrameError("the pixel description (Rows, Columns, Bits Allocated) is incomplete") from None

    def native_frame(self, index: int) -> bytes:
        """Frame ``index`` (0-based) as uncompressed little endian bytes."""
        location = self._pixels()
        bits = self._frame_bits()
        start_bit, end_bit = index * bits, (index + 1) * bits
        if location.length is not None and (end_bit + 7) // 8 > location.length:
            raise FrameError(f"the pixel data is too short for frame {index + 1}")
        self.stream.seek(location.offset + start_bit // 8)
        data = self.stream.read((end_bit + 7) // 8 - start_bit // 8)
        if start_bit % 8 or bits % 8:  # Bits Allocated 1: frames need not start on a byte
            unpacked = np.unpackbits(np.frombuffer(data, np.uint8), bitorder="little")
            unpacked = unpacked[start_bit % 8 : start_bit % 8 + bits]
            return np.packbits(unpacked, bitorder="little").tobytes()
        if self.transfer_syntax == ExplicitVRBigEndian:
            # OW values are swapped word by word, whatever the bits allocated (PS3.5 7.3)
            allocated = int(self.dataset.BitsAllocated)
            width = allocated // 8 if allocated in (32, 64) else 2 if location.vr == "OW" or allocated == 16 else 1
            if width > 1 and len(data) % width == 0:
                return np.frombuffer(data, f">u{width}").astype(f"<u{width}").tobytes()
        return data

    # --- encapsulated ---------------------------------------------------------------

    def _pixels(self) -> ElementLocation:
        if self.pixel_data is None:
            raise FrameError("the object has no pixel data")
        return self.pixel_data

    def _index_fragments(self) -> None:
        """Read the item headers of the encapsulated pixel data once (PS3.5 A.4)."""
        if self._fragments is not None:
            return
        location = self._pixels()
        stream = self.stream
        stream.seek(location.offset)
        tag, length = self._item_header()
        if tag != _ITEM:
            raise FrameError("the encapsulated pixel data has no Basic Offset Table item")
        table = stream.read(length)
        self._basic_offsets = list(struct.unpack(f"<{length // 4}L", table[: length // 4 * 4]))
        fragments = []
        position = location.offset + 8 + length
        while True:
            stream.seek(position)
            tag, length = self._item_header()
            if tag == _SEQUENCE_END:
                break
            if tag != _ITEM:
                raise FrameError("the encapsulated pixel data holds something other than items")
            fragments.append((position + 8, length))
            position += 8 + length
        self._fragments = fragments

    def _item_header(self) -> tuple[int, int]:
        data = self.stream.read(8)
        if len(data) < 8:
            raise FrameError("the encapsulated pixel data is truncated")
        group, element, length = struct.unpack("<HHL", data)
        return (group << 16) | element, length

    def frame_fragments(self, index: int) -> list[tuple[int, int]]:
        """(offset, length) of the fragments of frame ``index`` (0-based), as stored."""
        self._index_fragments()
        assert self._fragments is not None and self._basic_offsets is not None
        fragments, frames = self._fragments, self.number_of_frames
        if not fragments:
            raise FrameError("the encapsulated pixel data has no fragments")
        first = fragments[0][0] - 8  # offsets count from the first fragment's item tag
        extended = self.dataset.get("ExtendedOffsetTable")
        lengths = self.dataset.get("ExtendedOffsetTableLengths")
        if extended and lengths:  # PS3.3 C.7.6.3.1.8: one fragment per frame
            offsets = struct.unpack(f"<{len(extended) // 8}Q", extended)
            sizes = struct.unpack(f"<{len(lengths) // 8}Q", lengths)
            if index < len(offsets) and index < len(sizes):
                return [(first + offsets[index] + 8, sizes[index])]
        if self._basic_offsets and len(self._basic_offsets) == frames:
            start = first + self._basic_offsets[index]
            end = first + self._basic_offsets[index + 1] if index + 1 < frames else None
            return [f for f in fragments if f[0] - 8 >= start and (end is None or f[0] - 8 < end)]
        if frames == 1:
            return list(fragments)
        if len(fragments) == frames:
            return [fragments[index]]
        return []  # frame boundaries need the codestream markers: see frame_bytes

    def frame_bytes(self, index: int) -> bytes:
        """The encoded bytes of frame ``index`` (0-based), fragments joined."""
        fragments = self.frame_fragments(index)
        if fragments:
            return b"".join(self._read(offset, length) for offset, length in fragments)
        # several fragments per frame and no offset table: let pydicom find the
        # JPEG end-of-image markers
        self.stream.seek(self._pixels().offset)
        try:
            return get_frame(self.stream, index, number_of_frames=self.number_of_frames)
        except ValueError as exc:
            raise FrameError(f"cannot find the boundaries of frame {index + 1}: {exc}") from None

    def frame_chunks(self, index: int) -> Iterator[bytes]:
        """Frame ``index`` as stored (fragments concatenated, PS3.18 8.7.3.3.2), in chunks."""
        fragments = self.frame_fragments(index)
        if not fragments:
            yield self.frame_bytes(index)
            return
        for offset, length in fragments:
            for start in range(0, length, _CHUNK):
                yield self._read(offset + start, min(_CHUNK, length - start))

    def all_fragment_chunks(self) -> Iterator[bytes]:
        """Every fragment's content in order: a video's whole stream (PS3.5 8.2.5-8.2.8)."""
        self._index_fragments()
        assert self._fragments is not None
        for offset, length in self._fragments:
            for start in range(0, length, _CHUNK):
                yield self._read(offset + start, min(_CHUNK, length - start))

    def _read(self, offset: int, length: int) -> bytes:
        self.stream.seek(offset)
        data = self.stream.read(length)
        if len(data) != length:
            raise FrameError("the stored object is truncated")
        return data

    # --- decoded ------------------------------------------------------------------------

    def pixel_options(self) -> dict:
        options = dict(as_pixel_options(self.dataset))
        options["number_of_frames"] = 1
        options["pixel_keyword"] = "PixelData"
        return options

    def decode_frame(self, index: int) -> tuple[np.ndarray, dict]:
        """Frame ``index`` decoded (colour converted to RGB), with pydicom's pixel
        description of the result (e.g. its photometric interpretation)."""
        if self.encapsulated:
            source = encapsulate([self.frame_bytes(index)])
            syntax = self.transfer_syntax
        else:
            source = self.native_frame(index)
            syntax = ExplicitVRLittleEndian
        decoder = get_decoder(syntax)
        if not decoder.is_available:
            raise FrameError(f"no decoder is installed for transfer syntax {self.transfer_syntax}")
        try:
            return decoder.as_array(source, **self.pixel_options())
        except (ValueError, RuntimeError, NotImplementedError, AttributeError, TypeError) as exc:
            raise FrameError(f"frame {index + 1} cannot be decoded: {exc}") from None

    # --- any element --------------------------------------------------------------------

    def element_chunks(self, location: ElementLocation, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """Bytes ``start``..``end`` (exclusive) of a defined-length element's value."""
        assert location.length is not None
        stop = location.length if end is None else min(end, location.length)
        position = start
        while position < stop:
            size = min(_CHUNK, stop - position)
            yield self._read(location.offset + position, size)
            position += size

    def locate(self, tag: int) -> ElementLocation | None:
        """The location of the top-level element ``tag``, if present."""
        if self.pixel_data is not None and tag == self.pixel_data.tag:
            return self.pixel_data
        raw = self.dataset.get_item(tag) if tag in self.dataset else None
        if raw is not None:
            value_tell = getattr(raw, "value_tell", None)
            if value_tell is None:
                return None  # an undefined-length sequence: not bulk data
            return ElementLocation(tag, raw.VR or _vr_of(tag), value_tell, raw.length)
        if self.pixel_data is None or tag < self.pixel_data.tag:
            return None
        return self._locate_after_pixels(tag)

    def _locate_after_pixels(self, tag: int) -> ElementLocation | None:
        """Elements after the pixel data (rare: digital signatures, padding)."""
        location = self._pixels()
        if location.length is None:
            self._index_fragments()
            assert self._fragments is not None
            last = self._fragments[-1] if self._fragments else (location.offset, 0)
            position = last[0] + last[1] + 8  # after the sequence delimiter
        else:
            position = location.offset + location.length
        self.stream.seek(position)
        implicit = self.transfer_syntax == ImplicitVRLittleEndian
        little = self.transfer_syntax != ExplicitVRBigEndian
        for raw in data_element_generator(self.stream, implicit, little, defer_size=0):
            if raw.tag == tag:
                value_tell = getattr(raw, "value_tell", None)
                if value_tell is None or getattr(raw, "is_undefined_length", False):
                    return None
                return ElementLocation(tag, raw.VR or _vr_of(tag), value_tell, raw.length)
            if raw.tag > tag:
                break
        return None


def _vr_of(tag: int) -> str:
    try:
        return dictionary_VR(tag)
    except KeyError:
        return "UN"


def _pixel_header(stream: BinaryIO, syntax: str) -> ElementLocation | None:
    """Parse the element header where pydicom stopped before the pixel data."""
    position = stream.tell()
    head = stream.read(12)
    if len(head) < 8:
        return None
    order = ">" if syntax == ExplicitVRBigEndian else "<"
    group, element = struct.unpack(order + "HH", head[:4])
    tag = (group << 16) | element
    if tag != PIXEL_DATA:
        return None  # float or double pixel data: served as plain bulk data
    vr_bytes = head[4:6]
    # some writers label implicit VR data as explicit: read it as it is encoded
    if syntax != ImplicitVRLittleEndian and all(65 <= b <= 90 for b in vr_bytes):
        vr = vr_bytes.decode()
        if vr in _LONG_VRS:
            (length,) = struct.unpack(order + "L", head[8:12])
            offset = position + 12
        else:
            (length,) = struct.unpack(order + "H", head[6:8])
            offset = position + 8
    else:  # implicit VR (also when mislabelled as explicit)
        (length,) = struct.unpack(order + "L", head[4:8])
        vr, offset = "OW", position + 8
    return ElementLocation(tag, vr, offset, None if length == 0xFFFFFFFF else length)


def open_stored(stream: BinaryIO) -> StoredObject:
    """Parse the header of the Part 10 object in ``stream`` and find its pixel data."""
    try:
        dataset = pydicom.dcmread(stream, stop_before_pixels=True, defer_size=_DEFER)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on bad data
        raise FrameError(f"the stored object cannot be parsed: {type(exc).__name__}") from None
    syntax = UID(dataset.file_meta.get("TransferSyntaxUID") or ExplicitVRLittleEndian)
    if syntax == DeflatedExplicitVRLittleEndian:
        stream.seek(0)
        full = pydicom.dcmread(stream)
        full.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        inflated = io.BytesIO()
        full.save_as(inflated, enforce_file_format=True)
        inflated.seek(0)
        return open_stored(inflated)
    location = _pixel_header(stream, syntax)
    return StoredObject(stream, syntax, dataset, location)


def is_native(syntax: str) -> bool:
    return syntax in NATIVE_TRANSFER_SYNTAXES


def parse_frame_list(text: str, number_of_frames: int) -> list[int]:
    """``1,3,5`` -> 0-based indices (PS3.18 10.4.1.1.6: 1-based, comma-separated).

    Raises FrameError(400-worthy ValueError) for malformed lists and
    IndexError for frames beyond the object's.
    """
    numbers = []
    for piece in text.split(","):
        piece = piece.strip()
        if not piece.isdigit() or int(piece) < 1:
            raise ValueError(f"frame numbers are positive integers, not {piece[:16]!r}")
        numbers.append(int(piece))
    beyond = [n for n in numbers if n > number_of_frames]
    if beyond:
        raise IndexError(f"frame {beyond[0]} does not exist: the instance has {number_of_frames} frame(s)")
    return [n - 1 for n in numbers]
