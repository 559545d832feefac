"""Errors of the DICOMweb services as HTTP problem documents (RFC 9457).

PS3.18 8.6 names the status codes; the body explains in words that are safe to
log (they name attributes and parameters, never patient data).
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import JSONResponse


class DicomWebError(Exception):
    """Raise from a DICOMweb route to answer ``status`` with a problem document."""

    def __init__(self, status: int, detail: str, *, title: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.title = title
        self.headers = headers or {}


def problem(status: int, detail: str, title: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    from http import HTTPStatus

    body = {"type": "about:blank", "title": title or HTTPStatus(status).phrase, "status": status, "detail": detail}
    return JSONResponse(body, status_code=status, media_type="application/problem+json", headers=headers)


async def dicomweb_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DicomWebError)
    return problem(exc.status, exc.detail, exc.title, exc.headers)
