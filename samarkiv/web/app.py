"""The HTTP front door: health and metrics now; DICOMweb and the rest later."""

from __future__ import annotations

from fastapi import FastAPI, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..core.archive import Archive


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

    return app
