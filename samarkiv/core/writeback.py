"""The background mover of the write-back journal (docs/architecture.md, "A store").

Small objects are acknowledged once they sit, fsynced, in the index's
``inline_blobs`` table. This thread moves them to the blob store when the
archive has been idle (no store, query or retrieve) for ``journal_idle_seconds``
(so the move never competes with a burst of requests), or at once while the journal holds more than
``journal_max_bytes``.

When idle it also prepares the WADO-RS metadata (DICOM JSON) of instances
that lack it (web/dicomweb/metadata.py, ``instance_json``), so that study and
series metadata are answered without converting headers. Doing this here
rather than in the store path keeps ingest fast, covers both store paths
(journal and blob file) and archives indexed before the table existed; the
request path converts and keeps whatever is not prepared yet.

Scale-out (several ``serve`` processes on one PostgreSQL): every process runs
a mover and they share one journal. Each batch is claimed with ``SELECT ...
FOR UPDATE SKIP LOCKED`` for the transaction that moves it
(:meth:`Catalog.claim_inline`), so two movers never take the same row; a
process killed mid-batch loses its connection, PostgreSQL releases the rows,
and another mover moves them to the same keys (:func:`archive._journal_target`).
Nothing here assumes the first tier is local: it is whatever blob store the
first ``[[tiers]]`` names, typically an S3 bucket every node reaches.
"""

from __future__ import annotations

import logging
import threading
import time

from sqlalchemy.exc import SQLAlchemyError

from .archive import Archive

log = logging.getLogger(__name__)

POLL_SECONDS = 0.5
PREPARE_BATCH = 200  # instances whose metadata is prepared between two idle checks
RECHECK_SECONDS = 10.0  # shared index: how often an empty journal is looked at again


class JournalMover:
    """Runs :meth:`Archive.flush_inline` in a daemon thread until stopped."""

    def __init__(self, archive: Archive) -> None:
        self.archive = archive
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="journal-mover", daemon=True)
        self._prepared_upto = 0  # instances up to this primary key were looked at

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Stop after the batch in progress (the rest stays safely in the journal)."""
        self._stop.set()
        self._thread.join(timeout)

    def _idle(self) -> bool:
        """No store, query or retrieve for ``journal_idle_seconds``: idle-time
        work would otherwise take the interpreter from the requests."""
        last = max(self.archive.last_store, self.archive.last_request)
        return time.monotonic() - last >= self.archive.settings.journal_idle_seconds

    def _due(self, backlog_bytes: int) -> bool:
        return self._idle() or backlog_bytes > self.archive.settings.journal_max_bytes

    def _prepare_metadata(self) -> None:
        """While idle, prepare the metadata of instances stored since the last look.
        Replaced objects (same primary key) are left to the request path. A
        large backlog (an archive indexed before) is worked through at half
        a core, pausing as long as each batch took, so queries and retrieves
        served by this process meanwhile keep their pace."""
        # imported here: the web layer builds on the core
        from ..web.dicomweb.metadata import prepare_missing

        while self._idle() and not self._stop.is_set():
            started = time.monotonic()
            try:
                looked_at, self._prepared_upto = prepare_missing(self.archive, self._prepared_upto, PREPARE_BATCH)
            except SQLAlchemyError:
                raise  # retried by the loop
            except Exception:  # never let it stop the journal moves
                self.archive.metrics.errors.labels("metadata-prepare").inc()
                log.exception("preparing WADO-RS metadata failed; it is made on request instead")
                self._stop.wait(60)
                return
            if looked_at < PREPARE_BATCH:
                return
            self._stop.wait(time.monotonic() - started)

    def _run(self) -> None:
        metrics = self.archive.metrics
        count, seen = None, None  # journal size at the last look, and the store it had seen
        looked = time.monotonic()
        while not self._stop.wait(POLL_SECONDS):
            try:
                # Look again when this process stored something since the journal
                # was empty; with a shared index, also every RECHECK_SECONDS: other
                # nodes journal too, and one that died leaves its rows to us.
                stale = self.archive.shared and time.monotonic() - looked >= RECHECK_SECONDS
                if count != 0 or seen != self.archive.last_store or stale:
                    seen, looked = self.archive.last_store, time.monotonic()
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
                self._prepare_metadata()
            except (OSError, SQLAlchemyError) as exc:
                metrics.errors.labels("journal-move").inc()
                log.error("journal mover: moving objects or preparing metadata failed (will retry): %s", exc)
                self._stop.wait(5)
