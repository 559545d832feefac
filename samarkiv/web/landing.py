"""The landing page at ``/``: what this archive is, how to reach it, and what
it holds; links to the viewer, health, metrics and the API documentation.

The holdings (counts of patients, studies, instances, bytes) are information
about patient data: only an administrator or auditor sees them
(``templates/landing_holdings.html``); for anyone else the section is left out.

Plain HTML from ``templates/landing.html`` (``string.Template``, every value
escaped); no script.
"""

from __future__ import annotations

import html
from functools import cache
from importlib.resources import files
from string import Template

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse

from .. import __version__
from ..access.http import principal_of
from ..access.principal import Principal
from ..core.archive import Archive
from .viewer import VIEWER_PATH, find_viewer


HOLDINGS_ROLES = ("administrator", "auditor")


@cache
def _template(name: str = "landing.html") -> Template:
    return Template(files(__package__).joinpath(f"templates/{name}").read_text(encoding="utf-8"))


def sees_holdings(principal: Principal | None) -> bool:
    """Whether ``principal`` may see the whole-archive counts."""
    return principal is not None and principal.kind == "user" and principal.has_role(*HOLDINGS_ROLES)


def _holdings(archive: Archive) -> str:
    counts = archive.catalog.counts()
    values = {name: f"{counts.get(name, 0):,}" for name in ("patients", "studies", "series", "instances", "conflicts")}
    values["size"] = human_size(counts.get("bytes", 0))
    return _template("landing_holdings.html").substitute({k: html.escape(v) for k, v in values.items()})


def human_size(size: int) -> str:
    """Bytes in binary units, e.g. ``1.5 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def render_landing(archive: Archive, base: str = "", docs_url: str | None = "/docs", *, holdings: bool = False) -> str:
    """The page for ``archive``; ``base`` prefixes links (a proxy's root path);
    ``holdings``: with the counts (see :func:`sees_holdings`)."""
    settings = archive.settings
    viewer = find_viewer(settings.viewer_dir)
    viewer_note = (
        f"(OHIF, {viewer.package.removeprefix('@ohif/app@')})"
        if viewer.package
        else "(not installed: run scripts/install-viewer)"
    )
    values = {
        "aet": settings.aet,
        "version": __version__,
        "dicom_port": settings.dicom_port,
        "dicomweb_root": base + "/" + settings.dicomweb_root.strip("/"),
        "viewer_url": f"{base}{VIEWER_PATH}/",
        "viewer_note": viewer_note,
        "docs_url": base + (docs_url or "/openapi.json"),
        "healthz_url": f"{base}/healthz",
        "metrics_url": f"{base}/metrics",
    }
    escaped = {key: html.escape(str(value)) for key, value in values.items()}
    return _template().substitute(escaped, holdings=_holdings(archive) if holdings else "")


def create_router(archive: Archive) -> APIRouter:
    router = APIRouter(include_in_schema=False)

    @router.get("/")
    def landing(request: Request) -> HTMLResponse:
        # a plain def: counting runs SQL, so it belongs in the threadpool
        base = request.scope.get("root_path", "").rstrip("/")
        page = render_landing(archive, base, request.app.docs_url, holdings=sees_holdings(principal_of(request)))
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    return router
