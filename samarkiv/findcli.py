"""Placeholder: ``samarkiv find``, filled in by the query work."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the ``find`` command to ``app``."""
