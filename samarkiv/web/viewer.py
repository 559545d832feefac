"""The OHIF viewer at ``/viewer``: the installed prebuilt files, a single-page
application fallback to ``index.html``, and a generated ``app-config.js``
that points OHIF's DICOMweb data source at this archive (same origin).

``scripts/install-viewer`` fills ``settings.viewer_dir`` with a pinned
``@ohif/app`` ``dist/`` made relocatable; this module only serves it. OHIF's
``index.html`` names its assets from ``/``; it is rewritten per request to
the mount path, and ``window.PUBLIC_URL`` (from which the patched bundles
load their chunks, workers and WebAssembly) is set to the same.
"""

from __future__ import annotations

import json
import mimetypes
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse

from ..config import Settings

VIEWER_PATH = "/viewer"
MARKER = ".samarkiv-viewer"  # written by scripts/install-viewer; first line: "@ohif/app@<version>"

# webpack names chunks and assets after their content hash: safe to cache for good.
_HASHED = re.compile(r"(^|\.)[0-9a-f]{16}\.(js|wasm|woff2?)$")
# Root-absolute URLs in OHIF's index.html (href="/x", src="/x", content="/x").
_ROOT_URL = re.compile(r'\b(href|src|content)="/(?!/)')
_PUBLIC_URL = re.compile(r'window\.PUBLIC_URL\s*=\s*"/"')
_NOT_INSTALLED = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Viewer not installed</title></head>
<body><h1>The viewer is not installed</h1>
<p>Run <code>scripts/install-viewer</code> (it fetches the pinned OHIF viewer with npm),
or point the <code>viewer_dir</code> setting at an installed copy, then restart samarkiv.</p>
<p><a href="{home}">Back to the archive</a></p></body></html>"""


@dataclass(frozen=True)
class ViewerInstall:
    """What ``scripts/install-viewer`` left in a folder."""

    directory: Path
    package: str | None  # e.g. "@ohif/app@3.13.2"; None when not installed

    @property
    def installed(self) -> bool:
        return self.package is not None


def find_viewer(directory: Path) -> ViewerInstall:
    """The viewer installed in ``directory``, if any (it needs the install marker)."""
    try:
        marker = (directory / MARKER).read_text().splitlines()
    except OSError:
        return ViewerInstall(directory, None)
    if not marker or not (directory / "index.html").is_file():
        return ViewerInstall(directory, None)
    return ViewerInstall(directory, marker[0].strip())


def app_config(dicomweb_path: str, viewer_path: str, wado_uri_path: str = "/wado") -> dict[str, Any]:
    """OHIF's ``window.config`` for one DICOMweb data source: this archive.

    URLs are origin-relative paths here; ``app_config_js`` makes them absolute
    with the page's own origin, so the same answer serves every host name.
    """
    return {
        "name": "samarkiv",
        "routerBasename": viewer_path,
        "extensions": [],  # the build's own extensions and modes (basic viewer,
        "modes": [],  # with the dicom-pdf and dicom-video viewports)
        # no first-visit guided tour over the images
        "customizationService": [{"ohif.tours": {"$set": []}}],
        "showStudyList": True,
        "investigationalUseDialog": {"option": "never"},
        "showWarningMessageForCrossOrigin": False,
        "showCPUFallbackMessage": True,
        "showLoadingIndicator": True,
        "strictZSpacingForVolumeViewport": True,
        "groupEnabledModesFirst": True,
        "maxNumberOfWebWorkers": 3,
        "maxNumRequests": {"interaction": 100, "thumbnail": 5, "prefetch": 25},
        "showErrorDetails": "dev",
        "defaultDataSourceName": "samarkiv",
        "dataSources": [
            {
                "namespace": "@ohif/extension-default.dataSourcesModule.dicomweb",
                "sourceName": "samarkiv",
                "configuration": {
                    "friendlyName": "samarkiv",
                    "name": "samarkiv",
                    "qidoRoot": dicomweb_path,
                    "wadoRoot": dicomweb_path,
                    "wadoUriRoot": wado_uri_path,  # WADO-URI (PS3.18 9), unused with wadors
                    "qidoSupportsIncludeField": True,
                    "supportsFuzzyMatching": True,
                    "supportsWildcard": True,
                    "supportsReject": False,
                    "staticWado": False,
                    "imageRendering": "wadors",
                    # thumbnails from WADO-RS /thumbnail (PS3.18 9.5), fetched as image/jpeg
                    "thumbnailRendering": "thumbnail",
                    "thumbnailRequestStrategy": "fetch",
                    "enableStudyLazyLoad": True,
                    "dicomUploadEnabled": True,
                    # video and PDF objects open from their /rendered resource
                    # (one plain request the browser can play) instead of bulk data
                    "singlepart": "pdf,video",
                    "bulkDataURI": {"enabled": True, "relativeResolution": "studies"},
                    "omitQuotationForMultipartRequest": True,
                },
            }
        ],
    }


def app_config_js(dicomweb_path: str, viewer_path: str, wado_uri_path: str = "/wado") -> str:
    """``app-config.js``: the configuration, with the DICOMweb roots made absolute
    on the page's origin (OHIF resolves some URLs with ``new URL(root)``)."""
    config = json.dumps(app_config(dicomweb_path, viewer_path, wado_uri_path), indent=2)
    return (
        "/* Generated by samarkiv for the OHIF viewer. */\n"
        f"window.config = {config};\n"
        "window.config.dataSources.forEach(function (source) {\n"
        "  var c = source.configuration;\n"
        "  ['qidoRoot', 'wadoRoot', 'wadoUriRoot'].forEach(function (key) {\n"
        "    c[key] = window.location.origin + c[key];\n"
        "  });\n"
        "});\n"
    )


def rewrite_index(html: str, base: str) -> str:
    """OHIF's ``index.html`` with its root-absolute URLs moved under ``base``
    (which ends with ``/``)."""
    html = _ROOT_URL.sub(lambda m: f'{m.group(1)}="{base}', html)
    return _PUBLIC_URL.sub(f"window.PUBLIC_URL={json.dumps(base)}", html)


class _IndexCache:
    """The rewritten ``index.html``, read again only when the file changes."""

    def __init__(self) -> None:
        self._key: tuple[float, int, str] | None = None
        self._html = ""

    def get(self, path: Path, base: str) -> str:
        stat = path.stat()
        key = (stat.st_mtime, stat.st_size, base)
        if key != self._key:
            self._html = rewrite_index(path.read_text(encoding="utf-8"), base)
            self._key = key
        return self._html


def create_router(settings: Settings) -> APIRouter:
    """The routes under ``/viewer`` (plain routes: access control can wrap them)."""
    router = APIRouter(include_in_schema=False)
    directory = Path(settings.viewer_dir).absolute()
    dicomweb_root = "/" + settings.dicomweb_root.strip("/")
    index_cache = _IndexCache()

    def prefix(request: Request) -> str:
        return request.scope.get("root_path", "").rstrip("/")

    @router.get(VIEWER_PATH)
    def viewer_root(request: Request) -> Response:
        return RedirectResponse(f"{prefix(request)}{VIEWER_PATH}/", status_code=308)

    @router.api_route(f"{VIEWER_PATH}/app-config.js", methods=["GET", "HEAD"])
    def viewer_config(request: Request) -> Response:
        base = prefix(request)
        return Response(
            app_config_js(base + dicomweb_root, base + VIEWER_PATH, base + "/wado"),
            media_type="text/javascript",
            headers={"Cache-Control": "no-cache"},
        )

    @router.api_route(VIEWER_PATH + "/{path:path}", methods=["GET", "HEAD"])
    def viewer_file(path: str, request: Request) -> Response:
        install = find_viewer(directory)
        if not install.installed:
            page = _NOT_INSTALLED.format(home=prefix(request) + "/")
            return HTMLResponse(page, status_code=503, headers={"Cache-Control": "no-cache"})
        target = _inside(directory, path)
        if target is not None and target.is_file() and target.name != "index.html":
            return _file_response(target, request)
        if target is not None and _looks_like_asset(path):
            return Response(status_code=404)  # a missing chunk must fail, not load HTML
        # Anything else is a client-side route of the single-page application.
        html = index_cache.get(directory / "index.html", prefix(request) + VIEWER_PATH + "/")
        return HTMLResponse(html, headers={"Cache-Control": "no-cache"})

    return router


def _inside(directory: Path, path: str) -> Path | None:
    """``directory / path`` when it stays inside ``directory`` (no ``..`` escape)."""
    if "\x00" in path:
        return None
    target = (directory / path).resolve()
    if target != directory.resolve() and directory.resolve() not in target.parents:
        return None
    return target


def _looks_like_asset(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    return "." in name and not name.endswith(".html")


def _file_response(path: Path, request: Request) -> Response:
    """One installed file: its precompressed ``.gz`` twin when the client takes
    gzip, long-lived caching for content-hashed names, 304 on a matching ETag."""
    media_type = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    headers = {
        "Cache-Control": "public, max-age=31536000, immutable" if _HASHED.search(path.name) else "no-cache",
        "Vary": "Accept-Encoding",
    }
    sent = path
    gz = path.with_name(path.name + ".gz")
    if "gzip" in request.headers.get("accept-encoding", "") and gz.is_file():
        sent = gz
        headers["Content-Encoding"] = "gzip"
    response = FileResponse(sent, media_type=media_type, headers=headers, stat_result=sent.stat())
    etag = response.headers.get("etag")
    if etag and etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers={**headers, "ETag": etag})
    return response
