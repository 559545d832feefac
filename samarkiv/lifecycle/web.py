"""GET /admin/capacity: the capacity forecast as an HTML page (and its plot as PNG)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import HTMLResponse

from ..core.archive import Archive
from .capacity import forecast, render_html, render_png


def create_router(archive: Archive) -> APIRouter:
    router = APIRouter(prefix="/admin", include_in_schema=False)

    # plain def: the queries and the plot block, so they run in the threadpool
    @router.get("/capacity", response_class=HTMLResponse)
    def capacity_page() -> HTMLResponse:
        return HTMLResponse(render_html(forecast(archive)))

    @router.get("/capacity.png")
    def capacity_png() -> Response:
        return Response(render_png(forecast(archive)), media_type="image/png")

    return router
