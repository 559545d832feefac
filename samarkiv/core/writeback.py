"""The background mover of the write-back journal (docs/architecture.md, "A store").

Small objects are acknowledged once they sit, fsynced, in the index's
``inline_blobs`` table. This thread moves them to the blob store when the
archive has been idle for ``journal_idle_seconds`` (so the move never competes
with a burst of stores), or at once while the journal holds more than
``journal_max_bytes``.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.exc import SQLAlchemyError

from .archive import Archive

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5


class JournalMover:
    """Runs :meth:`Archive.flush_inline` in a daemon thread until stopped."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="journal-mover", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Stop after the batch in progress (the rest stays safely in the journal)."""
        self._stop.set()
        self._thread.join(timeout)

    def _due(self, backlog_bytes: int) -> bool:
        settings = self.archive.settings
        idle = time.monotonic() - self.archive.last_store >= settings.journal_idle_seconds
        return idle or backlog_bytes > settings.journal_max_bytes

    def _run(self) -> None:
        metrics = self.archive.metrics
        while not self._stop.wait(POLL_SECONDS):
            try:
                count, size = self.archive.catalog.inline_backlog()
                metrics.journal_instances.set(count)
                metrics.journal_bytes.set(size)
                while count and self._due(size) and not self._stop.is_set():
                    moved = self.archive.flush_inline()
                    count, size = self.archive.catalog.inline_backlog()
                    metrics.journal_instances.set(count)
                    metrics.journal_bytes.set(size)
                    if not moved:
                        break
            except (OSError, SQLAlchemyError) as exc:
                metrics.errors.labels("journal-move").inc()
                log.error("moving journalled objects to the blob store failed (will retry): %s", exc)
                self._stop.wait(5)
