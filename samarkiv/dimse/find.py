"""Placeholder: filled in by the find work."""

from __future__ import annotations

from collections.abc import Callable

from pynetdicom import AE, evt

from ..core.archive import Archive


def handlers(archive: Archive, ae: AE) -> list[tuple[evt.EventType, Callable]]:
    """Add this service's presentation contexts to ``ae`` and return its event handlers."""
    return []
