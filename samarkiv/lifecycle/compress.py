"""Lossless compression of an object on its way to a long-term tier.

The object is re-encoded (core/transcode.py) in JPEG-LS Lossless (PS3.5
A.4.3, ``1.2.840.10008.1.2.4.80``) or JPEG 2000 Lossless (PS3.5 A.4.4,
``1.2.840.10008.1.2.4.90``); the result is decoded again and must give the
very same pixel values, and the very same other attributes, as the original
before it is used. The original transfer syntax can be served again by
transcoding back (:func:`original_bytes`).
"""

from __future__ import annotations

import io
import logging
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.uid import UID

from ..core.transcode import TranscodeError, can_encode, transcode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Compressed:
    data: bytes
    transfer_syntax_uid: str


def _without_pixels(dataset: pydicom.Dataset) -> dict:
    """The attributes to compare, without Pixel Data, the File Meta group and
    group lengths (gggg,0000): retired (PS3.5 7.2), dropped when re-encoding,
    and no attribute of the image."""
    return {
        tag: (elem.VR, elem.value)
        for tag, elem in dataset.items()
        if tag != 0x7FE00010 and elem.tag.group != 0x0002 and elem.tag.element != 0x0000
    }


def compress(original: bytes, target: str) -> tuple[Compressed | None, str]:
    """The object re-encoded in ``target`` and verified, or (None, why not)."""
    target = UID(target)
    try:
        source = pydicom.dcmread(io.BytesIO(original))
    except Exception as exc:  # noqa: BLE001 - pydicom raises many kinds on odd data
        return None, f"cannot parse ({type(exc).__name__})"
    syntax = UID(source.file_meta.get("TransferSyntaxUID", "") or "")
    if "PixelData" not in source:
        return None, "no pixel data"
    if syntax.is_compressed:
        return None, f"already compressed ({syntax.name})"
    if not can_encode(target):
        return None, f"no encoder for {target.name} installed"
    try:
        data = transcode(io.BytesIO(original), target)
    except TranscodeError as exc:
        return None, str(exc)
    if len(data) >= len(original):
        return None, "no smaller when compressed"
    try:
        result = pydicom.dcmread(io.BytesIO(data))
        same_pixels = _same_pixels(source, result)
        same_rest = _without_pixels(source) == _without_pixels(result)
    except Exception as exc:  # noqa: BLE001
        return None, f"the compressed copy does not decode ({type(exc).__name__})"
    if not same_pixels:
        return None, "the compressed copy does not decode to the same pixels"
    if not same_rest:
        return None, "the compressed copy changed attributes other than pixel data"
    return Compressed(data, str(target)), ""


def _same_pixels(a: pydicom.Dataset, b: pydicom.Dataset) -> bool:
    left, right = a.pixel_array, b.pixel_array
    return left.shape == right.shape and left.dtype == right.dtype and bool(np.array_equal(left, right))


def original_bytes(stream: BinaryIO, original_syntax: str) -> bytes:
    """A compressed object given again in its original transfer syntax."""
    return transcode(io.BytesIO(stream.read()), original_syntax)  # any reader, even a non-file one
