"""Re-encoding a stored object in another transfer syntax (PS3.5 section 10, Annex A).

Objects are stored as they arrived; these functions serve a peer that asks
for another encoding. Decoding uses whatever pydicom's installed plugins can
read (pylibjpeg with libjpeg, openjpeg and rle; pyjpegls; pillow). Encoding
covers the native syntaxes and the lossless codecs those plugins can write:
RLE Lossless, JPEG-LS Lossless and JPEG 2000 Lossless. A whole object is
decoded in memory, one instance at a time; single frames are re-encoded on
their own (:func:`encode_frame`).
"""

from __future__ import annotations

import io
import logging
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.filewriter import dcmwrite
from pydicom.pixels import get_decoder, get_encoder
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGLSLossless,
    RLELossless,
)

log = logging.getLogger(__name__)

# What we write. Explicit VR Big Endian is retired (PS3.5 A.3) and not offered.
NATIVE_TARGETS = frozenset({ExplicitVRLittleEndian, ImplicitVRLittleEndian, DeflatedExplicitVRLittleEndian})
COMPRESSED_TARGETS = frozenset({RLELossless, JPEGLSLossless, JPEG2000Lossless})
_NATIVE_SOURCES = NATIVE_TARGETS | {ExplicitVRBigEndian}


class TranscodeError(ValueError):
    """The object cannot be given in the asked transfer syntax (the message says why)."""


def can_decode(syntax: str) -> bool:
    """Whether pixel data stored in ``syntax`` can be decoded here."""
    if syntax in _NATIVE_SOURCES:
        return True
    try:
        return get_decoder(syntax).is_available
    except NotImplementedError:
        return False


def can_encode(syntax: str) -> bool:
    """Whether objects can be written in ``syntax`` here."""
    if syntax in NATIVE_TARGETS:
        return True
    if syntax not in COMPRESSED_TARGETS:
        return False
    try:
        return get_encoder(syntax).is_available
    except NotImplementedError:
        return False


def can_transcode(source: str, target: str) -> bool:
    return source == target or (can_decode(source) and can_encode(target))


def transcode(stream: BinaryIO, target: str) -> bytes:
    """The Part 10 object in ``stream`` re-encoded in ``target``.

    An object without pixel data is labelled with any compressed syntax as it
    is (its data set is Explicit VR Little Endian either way, PS3.5 A.4).
    Raises TranscodeError when the pixel data cannot be decoded or encoded.
    """
    target = UID(target)
    if not can_encode(target):
        raise TranscodeError(f"transfer syntax {target} cannot be written by this archive")
    try:
        dataset = pydicom.dcmread(stream)
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on bad data
        raise TranscodeError(f"the stored object cannot be parsed ({type(exc).__name__})") from None
    source = UID(dataset.file_meta.get("TransferSyntaxUID") or ExplicitVRLittleEndian)
    if "PixelData" in dataset:
        _to_native_little_endian(dataset, source)
        if target.is_compressed:
            try:
                dataset.compress(target, generate_instance_uid=False)  # lossless: same instance
            except (ValueError, RuntimeError, NotImplementedError) as exc:
                raise TranscodeError(f"the pixel data cannot be encoded as {target.name}: {_first_line(exc)}") from None
    dataset.file_meta.TransferSyntaxUID = target
    out = io.BytesIO()
    dcmwrite(
        out,
        dataset,
        enforce_file_format=True,
        implicit_vr=target == ImplicitVRLittleEndian,
        little_endian=True,
    )
    return out.getvalue()


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__


def _to_native_little_endian(dataset: Dataset, source: UID) -> None:
    """Decode compressed or big endian pixel data in place (Explicit VR Little Endian values)."""
    if source.is_compressed:
        if not can_decode(source):
            raise TranscodeError(f"no decoder is installed for {source.name}")
        try:
            dataset.decompress(generate_instance_uid=False)
        except (ValueError, RuntimeError, NotImplementedError, AttributeError) as exc:
            raise TranscodeError(f"the pixel data cannot be decoded: {_first_line(exc)}") from None
        return
    if source != ExplicitVRBigEndian:
        return
    try:
        pixels = dataset.pixel_array
    except (ValueError, RuntimeError, AttributeError) as exc:
        raise TranscodeError(f"the pixel data cannot be decoded: {_first_line(exc)}") from None
    for _element in dataset.iterall():  # convert every raw value while the encoding is known
        pass
    if int(dataset.BitsAllocated) == 1:
        dataset.PixelData = np.packbits(pixels.ravel(), bitorder="little").tobytes()
    else:
        dataset.PixelData = pixels.astype(pixels.dtype.newbyteorder("<")).tobytes()
    dataset["PixelData"].VR = "OB" if int(dataset.BitsAllocated) <= 8 else "OW"
    if int(dataset.get("SamplesPerPixel", 1)) > 1:
        dataset.PlanarConfiguration = 0


def encode_frame(frame: np.ndarray, description: dict, target: str) -> bytes:
    """One decoded frame encoded in ``target`` (native: little endian bytes).

    ``description`` is pydicom's pixel description of ``frame`` (rows,
    columns, samples_per_pixel, bits_allocated, bits_stored,
    pixel_representation, photometric_interpretation).
    """
    target = UID(target)
    if not target.is_compressed:
        if int(description.get("bits_allocated", 8)) == 1:
            return np.packbits(frame.ravel(), bitorder="little").tobytes()
        return frame.astype(frame.dtype.newbyteorder("<")).tobytes()
    if not can_encode(target):
        raise TranscodeError(f"transfer syntax {target} cannot be written by this archive")
    options = {
        key: description[key]
        for key in (
            "rows", "columns", "samples_per_pixel", "bits_allocated", "bits_stored",
            "pixel_representation", "photometric_interpretation",
        )
        if key in description
    }  # fmt: skip
    options["number_of_frames"] = 1
    if int(options.get("samples_per_pixel", 1)) > 1:
        options["planar_configuration"] = 0
    options["photometric_interpretation"] = str(options.get("photometric_interpretation", "MONOCHROME2"))
    try:
        return bytes(get_encoder(target).encode(frame, **options))
    except (ValueError, RuntimeError, NotImplementedError) as exc:
        raise TranscodeError(f"the frame cannot be encoded as {target.name}: {_first_line(exc)}") from None
