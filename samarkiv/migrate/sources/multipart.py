"""Reading a ``multipart/related`` response body part by part (RFC 2046 5.1, RFC 2387;
PS3.18 8.6.1.2), as WADO-RS sends a study: memory is one part, never the whole study."""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

_BOUNDARY = re.compile(r'boundary\s*=\s*(?:"([^"]+)"|([^;\s]+))', re.IGNORECASE)


class MultipartError(ValueError):
    """A body that is not the multipart message its Content-Type announced."""


def boundary_of(content_type: str) -> str:
    """The boundary parameter of a ``multipart/*`` Content-Type."""
    if not content_type.lower().lstrip().startswith("multipart/"):
        raise MultipartError(f"expected a multipart response, got {content_type or 'no Content-Type'!r}")
    m = _BOUNDARY.search(content_type)
    if not m:
        raise MultipartError(f"no boundary in Content-Type {content_type!r}")
    return m.group(1) or m.group(2)


def read_parts(chunks: Iterable[bytes], boundary: str) -> Iterator[tuple[dict[str, str], bytes]]:
    """(headers with lower-case names, body) of each part, in order."""
    delimiter = b"\r\n--" + boundary.encode("ascii")
    buffer = bytearray(b"\r\n")  # so the first delimiter looks like every other one
    source = iter(chunks)

    def more() -> bool:
        for chunk in source:
            if chunk:
                buffer.extend(chunk)
                return True
        return False

    start = buffer.find(delimiter)
    while start < 0 and more():
        start = buffer.find(delimiter)
    if start < 0:
        raise MultipartError("no multipart boundary in the body")
    del buffer[: start + len(delimiter)]
    while True:
        while len(buffer) < 2 and more():
            pass
        if buffer[:2] == b"--":
            return  # close delimiter
        head_end = buffer.find(b"\r\n\r\n")
        while head_end < 0 and more():
            head_end = buffer.find(b"\r\n\r\n")
        if head_end < 0:
            raise MultipartError("truncated multipart body (part headers)")
        lines = bytes(buffer[:head_end]).decode("latin-1").split("\r\n")[1:]  # [0]: transport padding
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        del buffer[: head_end + 4]
        end = buffer.find(delimiter)
        while end < 0:
            searched = max(0, len(buffer) - len(delimiter))
            if not more():
                raise MultipartError("truncated multipart body (no closing boundary)")
            end = buffer.find(delimiter, searched)
        yield headers, bytes(buffer[:end])
        del buffer[: end + len(delimiter)]
