"""The lifecycle and fixity jobs inside ``samarkiv serve``.

One daemon thread: every ``lifecycle_interval_minutes`` it plans the rules;
between plannings it works on pending jobs (recalls are queued by reads and
done within seconds); with ``fixity_interval_days`` set it re-reads objects at
``fixity_mib_per_second``, a new pass once the last one is that old. Every
``serve`` process runs one; jobs and fixity batches are claimed once across
processes.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime, timedelta

from sqlalchemy.exc import SQLAlchemyError

from ..config import ConfigError
from ..core.archive import Archive

log = logging.getLogger(__name__)

POLL_SECONDS = 5.0


class LifecycleScheduler:
    def __init__(self, archive: Archive, poll_seconds: float = POLL_SECONDS) -> None:
        self.archive = archive
        self.poll = poll_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="lifecycle", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 30) -> None:
        """Stop after the object in hand (claimed jobs left over are retried later)."""
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        from .fixity import FixityChecker
        from .mover import LifecycleRunner

        settings = self.archive.settings
        try:
            runner = LifecycleRunner(self.archive, stop=self._stop)
        except ConfigError as exc:
            log.error("lifecycle rules not run: %s", exc)
            return
        checker = FixityChecker(self.archive, stop=self._stop)
        interval = timedelta(minutes=settings.lifecycle_interval_minutes)
        next_plan = time.monotonic() + 10  # let the server settle first
        while not self._stop.wait(self.poll):
            try:
                if runner.rules and time.monotonic() >= next_plan:
                    runner.plan()
                    next_plan = time.monotonic() + interval.total_seconds()
                runner.run(plan=False, limit=50)
                if settings.fixity_interval_days and self._fixity_due(checker):
                    checker.run_pass(limit=200)
            except (OSError, SQLAlchemyError, ValueError) as exc:
                log.error("lifecycle/fixity work failed (will retry): %s", type(exc).__name__)
                self._stop.wait(30)

    def _fixity_due(self, checker) -> bool:  # type: ignore[no-untyped-def]
        from .fixity import CURSOR

        if self.archive.catalog.state(CURSOR) not in (None, "0"):
            return True  # a pass is under way
        last = checker.last_pass()
        due = timedelta(days=self.archive.settings.fixity_interval_days)
        return last is None or datetime.now(UTC) - last >= due
