"""When a study was last read: cheap enough to call on every retrieval.

Call :func:`note_access` from the retrieval paths (C-GET, C-MOVE, WADO-RS,
WADO-URI) once per request and study. A process writes a study's row at most
once an hour (an in-memory memo), and the row itself is updated only when
older than an hour, so a busy study costs one statement per process per hour.
With a ``recall_on_access`` rule, the first access in the hour to a study on
the rule's target tier queues its move back (lifecycle/mover.py).
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from datetime import UTC, datetime, timedelta

from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError

from ..core.archive import Archive
from ..index.lifecycle_schema import study_access

log = logging.getLogger(__name__)

RESOLUTION = timedelta(hours=1)
_MEMO_LIMIT = 100_000
_memos: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def note_access(archive: Archive, study_uid: str) -> None:
    """Record that ``study_uid`` was read now. Never raises (reading goes on)."""
    if not study_uid:
        return
    now_m = time.monotonic()
    with _lock:
        memo = _memos.setdefault(archive, {})
        last = memo.get(study_uid)
        if last is not None and now_m - last < RESOLUTION.total_seconds():
            return
        if len(memo) >= _MEMO_LIMIT:
            memo.clear()
        memo[study_uid] = now_m
    try:
        _record(archive, study_uid, datetime.now(UTC))
        if any(rule.recall_on_access for rule in archive.settings.lifecycle):
            from .mover import LifecycleRunner

            queued = LifecycleRunner(archive).queue_recall(study_uid)
            if queued:
                log.info("queued %d object(s) of a study for recall", queued)
    except (SQLAlchemyError, OSError, ValueError) as exc:
        log.warning("cannot record a study access: %s", type(exc).__name__)


def _record(archive: Archive, study_uid: str, now: datetime) -> None:
    insert = postgresql.insert if archive.engine.dialect.name == "postgresql" else sqlite.insert
    statement = (
        insert(study_access)
        .values(study_instance_uid=study_uid, last_access_at=now)
        .on_conflict_do_update(
            index_elements=["study_instance_uid"],
            set_={"last_access_at": now},
            where=study_access.c.last_access_at < now - RESOLUTION,
        )
    )
    with archive.catalog.writer.begin() as conn:
        conn.execute(statement)


def forget_memo(archive: Archive) -> None:
    """Drop this process's memo (tests; or after a clock change)."""
    with _lock:
        _memos.pop(archive, None)
