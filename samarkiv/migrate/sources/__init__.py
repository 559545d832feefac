"""Sources a migration pulls from. Each one enumerates studies, lists a study's
instances, pulls the missing ones, and (where it can) serves an object's bytes
again for verification. See base.py for the interface."""

from __future__ import annotations

from typing import Any

from .base import Source, SourceBusy, SourceError, SourceTimeout


def open_source(kind: str, options: dict[str, Any]) -> Source:
    """The source of a job, built from the options stored with it."""
    if kind == "dimse":
        from .dimse import DimseSource

        return DimseSource(options)
    if kind == "dicomweb":
        from .dicomweb import DicomWebSource

        return DicomWebSource(options)
    if kind == "filesystem":
        from .filesystem import FilesystemSource

        return FilesystemSource(options)
    raise SourceError(f"unknown source kind {kind!r}")


__all__ = ["Source", "SourceBusy", "SourceError", "SourceTimeout", "open_source"]
