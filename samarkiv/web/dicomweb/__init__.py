"""DICOMweb (PS3.18): STOW-RS, QIDO-RS and WADO-RS under the configured root.

Each service lives in its own module with its own ``router``; this package
only assembles them. The routes translate HTTP into core calls (Archive,
index.query, index.retrieval) and back, and hold no business rules.
"""

from __future__ import annotations

from fastapi import APIRouter

from ...core.archive import Archive


def create_router(archive: Archive) -> APIRouter:
    """All DICOMweb routes, to be mounted at ``settings.dicomweb_root``."""
    from . import metadata, qido, stow, wado  # the services import this package's helpers

    router = APIRouter()
    for service in (stow, qido, metadata, wado):
        router.include_router(service.create_router(archive))
    return router
