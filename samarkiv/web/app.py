"""The HTTP front door: health, metrics, DICOMweb, WADO-URI, FHIR, the viewer and
the landing page, all behind authentication (samarkiv/access/http.py) but /healthz."""

from __future__ import annotations

from fastapi import FastAPI, Response
from fastapi.middleware.cors import CORSMiddleware
from fastapi.middleware.gzip import GZipMiddleware
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..access import login
from ..access.http import AuthenticationMiddleware, Authenticator
from ..core.archive import Archive
from ..audit import web as audit_web
from ..lifecycle import web as lifecycle_web
from . import dicomweb, fhir, landing, viewer
from .dicomweb import wado_uri
from .dicomweb.errors import DicomWebError, dicomweb_error_handler


# Already compressed, or bulk data that would only cost CPU (and break Range).
_NOT_GZIPPED = (
    "multipart/related", "application/dicom", "application/octet-stream", "application/pdf",
    "image/*", "video/*", "audio/*", "application/zip", "application/gzip",
)


class Readiness:
    """Whether the process accepts stores (set by serve once both doors are open)."""

    def __init__(self) -> None:
        self.ready = False


def create_app(archive: Archive, readiness: Readiness) -> FastAPI:
    app = FastAPI(title="samarkiv", version="0.1.0")

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> Response:
        if readiness.ready:
            return JSONResponse({"status": "ok"})
        return JSONResponse({"status": "starting or stopping"}, status_code=503)

    @app.get("/metrics", include_in_schema=False)
    def metrics() -> Response:
        return Response(generate_latest(archive.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    settings = archive.settings
    app.include_router(dicomweb.create_router(archive), prefix=settings.dicomweb_root.rstrip("/"))
    app.include_router(wado_uri.create_router(archive))  # /wado: WADO-URI (PS3.18 9)
    app.include_router(viewer.create_router(settings))  # /viewer: OHIF
    app.include_router(audit_web.create_router(archive))  # /fhir/AuditEvent, /api/patients/{id}/access-log (before fhir's catch-all)
    app.include_router(fhir.create_router(archive), prefix="/fhir")  # FHIR R4 read access
    app.include_router(landing.create_router(archive))  # /
    app.include_router(lifecycle_web.create_router(archive))  # /admin/capacity
    app.add_exception_handler(DicomWebError, dicomweb_error_handler)
    # Every route but /healthz and the login page needs a principal (samarkiv/access/http.py).
    authenticator = Authenticator(archive)
    app.state.authenticator = authenticator
    app.include_router(login.create_router(authenticator))  # /login, /logout
    app.add_middleware(AuthenticationMiddleware, authenticator=authenticator)
    # JSON answers (QIDO-RS, metadata) are large and compress well; DICOM and
    # image payloads are left alone (GZip only touches text-like media types).
    app.add_middleware(GZipMiddleware, minimum_size=1024, exclude_content_types=_NOT_GZIPPED)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(settings.cors_origins),
            allow_methods=["GET", "POST", "OPTIONS"],
            allow_headers=["*"],
            expose_headers=["Content-Location", "Warning", "X-Total-Count", "Link", "Content-Range", "Accept-Ranges"],
        )
    return app
