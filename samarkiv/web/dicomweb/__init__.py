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
    router = APIRouter()
    for module in _service_modules():
        router.include_router(module.create_router(archive))
    return router


def _service_modules():  # type: ignore[no-untyped-def]
    """The service modules present; each has ``create_router(archive) -> APIRouter``."""
    import importlib

    found = []
    for name in ("stow", "qido", "metadata", "wado"):
        try:
            found.append(importlib.import_module(f"{__name__}.{name}"))
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    return found
