"""A streaming ``multipart/related`` writer (RFC 2387, RFC 2046 5.1; PS3.18 8.6.1.2).

Parts are produced one after the other from iterables of byte chunks, so a
study of any size passes through with memory bounded by one chunk.
"""

from __future__ import annotations

import io
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

CHUNK = 1 << 20


@dataclass
class Part:
    """One body part: its Content-Type, extra header fields, and its content."""

    content_type: str
    body: Iterable[bytes]
    headers: dict[str, str] = field(default_factory=dict)


def new_boundary() -> str:
    # RFC 2046 5.1.1: up to 70 characters, never found in the content (a random
    # UUID is as good as a check, and a check would need the whole body).
    return f"samarkiv-{uuid.uuid4().hex}"


def content_type(part_type: str, boundary: str, transfer_syntax: str | None = None) -> str:
    """The Content-Type of the whole message (PS3.18 8.6.1.2.2)."""
    value = f'multipart/related; type="{part_type}"; boundary={boundary}'
    if transfer_syntax:
        value += f"; transfer-syntax={transfer_syntax}"
    return value


def part_content_type(media_type: str, transfer_syntax: str | None = None) -> str:
    return f"{media_type}; transfer-syntax={transfer_syntax}" if transfer_syntax else media_type


def write_parts(parts: Iterable[Part], boundary: str) -> Iterator[bytes]:
    """The encoded message: each part's header, then its content, then the close
    delimiter. Parts are pulled lazily, so a part may be computed on demand.

    Small pieces are gathered into chunks of about :data:`CHUNK` bytes: the
    server hands every chunk of a synchronous body to a worker thread, which
    costs more than sending a small instance."""
    gathered: list[bytes] = []
    size = 0
    for piece in _pieces(parts, f"--{boundary}".encode("ascii")):
        if size + len(piece) > CHUNK and gathered:
            yield b"".join(gathered)  # one copy, where a growing bytearray made two and more
            gathered, size = [], 0
        if len(piece) >= CHUNK:
            yield piece
        else:
            gathered.append(piece)
            size += len(piece)
    if gathered:
        yield b"".join(gathered)


def _part_header(marker: bytes, content_type: str, headers: dict[str, str]) -> bytes:
    lines = [f"Content-Type: {content_type}", *(f"{name}: {value}" for name, value in headers.items())]
    return marker + b"\r\n" + "\r\n".join(lines).encode("latin-1") + b"\r\n\r\n"


def _pieces(parts: Iterable[Part], marker: bytes) -> Iterator[bytes]:
    for part in parts:
        yield _part_header(marker, part.content_type, part.headers)
        for chunk in part.body:
            if chunk:
                yield chunk if isinstance(chunk, bytes) else bytes(chunk)
        yield b"\r\n"
    yield marker + b"--\r\n"


def message_length(parts: Iterable[tuple[str, int]], boundary: str) -> int:
    """The length of the message :func:`write_parts` makes of parts with these
    ``(Content-Type, content length)`` and no other header fields: a response
    whose parts' sizes are known is sent with a Content-Length, not chunked."""
    marker = f"--{boundary}".encode("ascii")
    return sum(len(_part_header(marker, kind, {})) + size + 2 for kind, size in parts) + len(marker) + 4


def _size_from(stream: BinaryIO, start: int) -> int | None:
    try:
        return max(0, os.fstat(stream.fileno()).st_size - start)
    except (AttributeError, OSError, io.UnsupportedOperation):  # not a file (BytesIO, a remote object)
        return None


def file_chunks(stream: BinaryIO, start: int = 0, length: int | None = None, chunk: int = CHUNK) -> Iterator[bytes]:
    """``length`` bytes (or everything) of ``stream`` from ``start``, in chunks.
    For a file, "everything" is its size when opened (stored objects never change),
    so a small object is one exact read rather than a chunk-sized one and a probe."""
    stream.seek(start)
    remaining = length if length is not None else _size_from(stream, start)
    while remaining is None or remaining > 0:
        data = stream.read(chunk if remaining is None else min(chunk, remaining))
        if not data:
            if remaining:
                raise OSError(f"stored object ends {remaining} bytes early")
            return
        if remaining is not None:
            remaining -= len(data)
        yield data
