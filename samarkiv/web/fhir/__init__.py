"""FHIR R4 (4.0.1) read access: Patient and ImagingStudy, JSON only, mounted at /fhir.

- capability.py: ``GET /fhir/metadata``, the CapabilityStatement.
- patient.py: Patient read and search; a Patient is a person of the master
  patient index (samarkiv.identity.patients).
- imaging_study.py: ImagingStudy read and search from the catalogue, each
  linked to this server's DICOMweb endpoint.
- search.py (parameters), bundle.py (searchset Bundles), systems.py
  (identifier systems), errors.py (OperationOutcome answers).

Only ``GET`` reads and searches (and ``POST [type]/_search``) are offered:
any other method is 405, any other resource type or interaction 404, each
with an OperationOutcome (FHIR R4 http.html).
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from ...core.archive import Archive
from . import capability, imaging_study, patient
from .errors import FhirError, FhirRoute

SUPPORTED = ("Patient", "ImagingStudy")


def create_router(archive: Archive) -> APIRouter:
    """All FHIR routes, to be mounted at ``/fhir``."""
    router = APIRouter(route_class=FhirRoute)
    router.include_router(capability.create_router())
    router.include_router(patient.create_router(archive))
    router.include_router(imaging_study.create_router(archive))

    @router.api_route("/{path:path}", methods=["GET", "HEAD"], include_in_schema=False)
    def unsupported(path: str, request: Request) -> None:
        kind = path.split("/", 1)[0]
        if kind in SUPPORTED:
            raise FhirError(404, f"the interaction {request.method} {kind}/... is not supported", code="not-supported")
        raise FhirError(
            404, f"resource type {kind or '(none)'!r} is not supported; this server offers {', '.join(SUPPORTED)}",
            code="not-supported",
        )  # fmt: skip

    @router.api_route("/{path:path}", methods=["POST", "PUT", "PATCH", "DELETE", "OPTIONS"], include_in_schema=False)
    def not_allowed(path: str, request: Request) -> None:
        raise FhirError(
            405, f"{request.method} is not allowed: this FHIR server is read-only", headers={"Allow": "GET"}
        )

    return router
