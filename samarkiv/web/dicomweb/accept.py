"""Content negotiation for the DICOMweb services (PS3.18 8.7).

A request names its Acceptable Media Types in the ``accept`` query parameter
(PS3.18 8.3.3.1) and in the Accept header field (RFC 9110 12.5.1); the query
parameter comes first. Each media range may carry a ``type`` parameter (for
``multipart/related``, RFC 2387) and a ``transfer-syntax`` parameter
(PS3.18 8.7.3.5.2). This module parses them into :class:`Acceptable` entries,
ordered by preference, which the services match against what they can send.

Nothing here is specific to one service: STOW-RS, QIDO-RS and WADO-RS may all
use it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

ANY = "*/*"
MULTIPART_RELATED = "multipart/related"
DICOM = "application/dicom"
OCTET_STREAM = "application/octet-stream"

# Experimental names of earlier editions (PS3.18 2017) still sent by clients.
_ALIASES = {
    "image/x-dicom-rle": "image/dicom-rle",
    "image/x-jls": "image/jls",
    "video/mpeg2": "video/mpeg",
    "video/h265": "video/H265",
}

# Table 8.7.3-5: the media type of compressed bulk data (frames) per transfer syntax.
BULK_MEDIA_TYPE: dict[str, str] = {
    "1.2.840.10008.1.2.4.50": "image/jpeg",
    "1.2.840.10008.1.2.4.51": "image/jpeg",
    "1.2.840.10008.1.2.4.57": "image/jpeg",
    "1.2.840.10008.1.2.4.70": "image/jpeg",
    "1.2.840.10008.1.2.5": "image/dicom-rle",
    "1.2.840.10008.1.2.4.80": "image/jls",
    "1.2.840.10008.1.2.4.81": "image/jls",
    "1.2.840.10008.1.2.4.90": "image/jp2",
    "1.2.840.10008.1.2.4.91": "image/jp2",
    "1.2.840.10008.1.2.4.92": "image/jpx",
    "1.2.840.10008.1.2.4.93": "image/jpx",
    "1.2.840.10008.1.2.4.201": "image/jphc",
    "1.2.840.10008.1.2.4.202": "image/jphc",
    "1.2.840.10008.1.2.4.203": "image/jphc",
    "1.2.840.10008.1.2.4.100": "video/mpeg",
    "1.2.840.10008.1.2.4.101": "video/mpeg",
    "1.2.840.10008.1.2.4.102": "video/mp4",
    "1.2.840.10008.1.2.4.103": "video/mp4",
    "1.2.840.10008.1.2.4.104": "video/mp4",
    "1.2.840.10008.1.2.4.105": "video/mp4",
    "1.2.840.10008.1.2.4.106": "video/mp4",
    "1.2.840.10008.1.2.4.107": "video/H265",
    "1.2.840.10008.1.2.4.108": "video/H265",
}

# Table 8.7.3-5 / 8.7.3-4: the default transfer syntax of each bulk data media type.
DEFAULT_TRANSFER_SYNTAX: dict[str, str] = {
    OCTET_STREAM: ExplicitVRLittleEndian,
    "image/jpeg": "1.2.840.10008.1.2.4.70",
    "image/dicom-rle": "1.2.840.10008.1.2.5",
    "image/jls": "1.2.840.10008.1.2.4.80",
    "image/jp2": "1.2.840.10008.1.2.4.90",
    "image/jpx": "1.2.840.10008.1.2.4.92",
    "image/jphc": "1.2.840.10008.1.2.4.201",
    "video/mpeg": "1.2.840.10008.1.2.4.100",
    "video/mp4": "1.2.840.10008.1.2.4.102",
    "video/H265": "1.2.840.10008.1.2.4.107",
}

# Transfer syntaxes whose pixel data is not encapsulated (PS3.5 A.1-A.3, A.5).
NATIVE_TRANSFER_SYNTAXES = frozenset(
    {ImplicitVRLittleEndian, ExplicitVRLittleEndian, ExplicitVRBigEndian, DeflatedExplicitVRLittleEndian}
)

# Lossy (or possibly lossy) compression: PS3.18 8.7.3 lets the origin server
# answer in the stored syntax when it has only the lossy form.
LOSSY_TRANSFER_SYNTAXES = frozenset(
    {
        "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
        "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.93", "1.2.840.10008.1.2.4.203",
        *(f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109)),
    }
)  # fmt: skip

VIDEO_TRANSFER_SYNTAXES = frozenset(f"1.2.840.10008.1.2.4.{n}" for n in range(100, 109))


def canonical_media_type(media_type: str) -> str:
    """Lower-case ``type/subtype`` with the experimental aliases resolved."""
    lowered = media_type.strip().lower()
    return _ALIASES.get(lowered, lowered)


@dataclass(frozen=True)
class MediaRange:
    """One element of an Accept value (RFC 9110 12.5.1)."""

    media_type: str  # canonical, may hold wildcards
    params: tuple[tuple[str, str], ...] = ()
    q: float = 1.0

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return None


@dataclass(frozen=True)
class Acceptable:
    """An acceptable representation: the media type of the payload (or of each
    part of a multipart payload), its transfer syntax parameter, and whether
    it comes as ``multipart/related`` (``None``: either)."""

    media_type: str
    transfer_syntax: str | None = None
    multipart: bool | None = None
    q: float = 1.0

    def matches(self, media_type: str) -> bool:
        """Whether this range covers the concrete ``media_type``."""
        return media_type_matches(self.media_type, media_type)

    @property
    def any_syntax(self) -> bool:
        return self.transfer_syntax == "*"


class AcceptError(ValueError):
    """The Accept value cannot be parsed (answered with 400)."""


def media_type_matches(pattern: str, media_type: str) -> bool:
    pattern, media_type = canonical_media_type(pattern), canonical_media_type(media_type)
    if pattern in (ANY, "*"):
        return True
    major, _, minor = pattern.partition("/")
    other_major, _, other_minor = media_type.partition("/")
    return major == other_major and minor in ("*", other_minor)


def _split(value: str, separator: str) -> list[str]:
    """Split on ``separator`` outside double quotes."""
    parts, current, quoted = [], [], False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == separator and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


def parse_media_range(text: str) -> MediaRange | None:
    """One ``type/subtype; name=value ...`` element; None when empty."""
    pieces = _split(text, ";")
    media_type = pieces[0].strip()
    if not media_type:
        return None
    if "/" not in media_type and media_type != "*":
        raise AcceptError(f"{media_type[:64]!r} is not a media type")
    params: list[tuple[str, str]] = []
    q = 1.0
    for piece in pieces[1:]:
        name, _, value = piece.partition("=")
        name, value = name.strip().lower(), value.strip().strip('"').strip()
        if not name:
            continue
        if name == "q":
            try:
                q = float(value)
            except ValueError:
                raise AcceptError(f"invalid quality value {value[:16]!r}") from None
            if not 0 <= q <= 1:
                raise AcceptError(f"quality value {value[:16]!r} is out of range")
        else:
            params.append((name, value))
    return MediaRange(canonical_media_type(media_type), tuple(params), q)


def parse_accept(values: Iterable[str]) -> list[MediaRange]:
    """All media ranges of the given Accept values / accept parameters, in order."""
    ranges = []
    for value in values:
        for element in _split(value, ","):
            parsed = parse_media_range(element)
            if parsed is not None:
                ranges.append(parsed)
    return ranges


def _acceptable(media_range: MediaRange) -> Acceptable:
    media_type = media_range.media_type
    syntax = media_range.param("transfer-syntax")
    if media_type in (MULTIPART_RELATED, "multipart/*"):
        inner = media_range.param("type")
        if inner:
            # type="image/jpeg; transfer-syntax=..." (a few clients put it inside)
            nested = parse_media_range(inner)
            if nested is not None:
                inner = nested.media_type
                syntax = syntax or nested.param("transfer-syntax")
        return Acceptable(canonical_media_type(inner) if inner else ANY, syntax, True, media_range.q)
    if media_type in (ANY, "*"):
        return Acceptable(ANY, syntax, None, media_range.q)
    return Acceptable(media_type, syntax, False, media_range.q)


def acceptable(accept_header: str | None, accept_params: Iterable[str] = ()) -> list[Acceptable]:
    """Acceptable Media Types of a request, most preferred first (PS3.18 8.7.5).

    The ``accept`` query parameters come before the Accept header; within the
    same quality the order of the request is kept. Ranges with ``q=0`` are
    dropped; an absent or empty Accept means ``*/*``.
    """
    values = [v for v in accept_params if v.strip()]
    if accept_header and accept_header.strip():
        values.append(accept_header)
    ranges = [r for r in parse_accept(values) if r.q > 0]
    if not values:
        ranges = [MediaRange(ANY)]
    found = [_acceptable(r) for r in ranges]
    return sorted(found, key=lambda a: -a.q)  # stable: request order within a quality


def acceptable_from_request(request) -> list[Acceptable]:  # type: ignore[no-untyped-def]
    """:func:`acceptable` for a Starlette/FastAPI request."""
    return acceptable(request.headers.get("accept"), request.query_params.getlist("accept"))


def describe(entries: Iterable[Acceptable]) -> str:
    """A short readable list of what was asked, for 406 messages."""
    shown = []
    for entry in entries:
        text = f"multipart/related; type={entry.media_type}" if entry.multipart else entry.media_type
        if entry.transfer_syntax:
            text += f"; transfer-syntax={entry.transfer_syntax}"
        shown.append(text)
    return ", ".join(shown[:6]) or "nothing"
