"""FHIR errors as OperationOutcome resources (FHIR R4 http.html, operationoutcome.html).

Every failure of a FHIR interaction answers with an OperationOutcome and the
status FHIR R4 http.html names: 400 for a search or read the server cannot
parse, 404 for an unknown resource or resource type, 405 for an interaction
the server does not offer, 406 for a format it cannot produce. The
diagnostics name parameters and resource types, never patient data.

:class:`FhirRoute` is the router's route class: it turns a :class:`FhirError`
raised anywhere in a route into that answer, so the FHIR router needs no
application-wide exception handler.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from ...access.http import principal_of
from ...access.principal import Principal

FHIR_JSON = "application/fhir+json"

# FHIR R4 valueset-issue-type codes used here.
ISSUE_CODE_BY_STATUS = {
    400: "invalid", 401: "login", 403: "forbidden", 404: "not-found", 405: "not-supported", 406: "not-supported",
    500: "exception",
}  # fmt: skip


class FhirError(Exception):
    """Raise from a FHIR route to answer ``status`` with an OperationOutcome."""

    def __init__(
        self, status: int, diagnostics: str, *, code: str | None = None, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        self.diagnostics = diagnostics
        self.code = code or ISSUE_CODE_BY_STATUS.get(status, "processing")
        self.headers = headers or {}


def caller(request: Request) -> Principal:
    """The authenticated principal of a FHIR request (samarkiv/access/http.py); 401 without one."""
    principal = principal_of(request)
    if principal is None:
        raise FhirError(401, "authentication required", headers={"WWW-Authenticate": 'Bearer realm="samarkiv"'})
    return principal


def operation_outcome(diagnostics: str, code: str, severity: str = "error") -> dict[str, Any]:
    """An OperationOutcome with one issue (FHIR R4 operationoutcome.html)."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": diagnostics}],
    }


def fhir_json(body: dict[str, Any], status: int = 200, *, pretty: bool = False, headers: dict[str, str] | None = None) -> Response:
    """A FHIR JSON answer (FHIR R4 http.html#mime-type: application/fhir+json)."""
    text = json.dumps(body, ensure_ascii=False, indent=2 if pretty else None, separators=None if pretty else (",", ":"))
    return Response(text.encode(), status_code=status, media_type=f"{FHIR_JSON}; charset=utf-8", headers=headers)


def error_response(exc: FhirError) -> Response:
    return fhir_json(operation_outcome(exc.diagnostics, exc.code), exc.status, headers=exc.headers)


class FhirRoute(APIRoute):
    """An APIRoute whose FhirErrors become OperationOutcome answers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def fhir_handler(request: Request) -> Response:
            try:
                return await handler(request)
            except FhirError as exc:
                return error_response(exc)

        return fhir_handler
