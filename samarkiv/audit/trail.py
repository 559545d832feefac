"""The audit trail: append records to the hash chain, cheaply on the caller's thread.

``AuditTrail.record(event)`` checks the event and puts it on a bounded queue
(a few microseconds); one background writer thread takes what queues up within
``linger_seconds`` of the first record and appends it in one transaction per
batch (a commit per record would cost a query-heavy door more CPU than the
queries themselves). ``flush()`` waits until all that
was recorded is committed. A full queue (the database is down or far behind)
blocks the caller for up to ``block_seconds`` and then raises
:class:`AuditUnavailable`: records are never dropped silently.

``record_in(connection, events)`` appends within the caller's own
transaction instead (the record commits or rolls back with the caller's
work). On SQLite that connection must be able to write (the catalogue's
writer engine, or a transaction that has not read yet).

Every append first updates the ``audit_head`` row (SQLite: takes the database
write lock; PostgreSQL: a row lock held to commit), so appends from several
threads and processes sharing one database form one linear chain. An anchor
(seq, hash, time) is written every ``anchor_every`` records or, when records
were appended since the last one, every ``anchor_seconds``.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select, update
from sqlalchemy.exc import SQLAlchemyError

from ..index.audit_schema import GENESIS_HASH, audit_anchors, audit_events, audit_head, audit_patients
from .events import ACTIONS, OUTCOMES, AuditError, AuditEvent, chain_hash, patient_keys_of, row_of

log = logging.getLogger(__name__)

_ACTIONS = frozenset(ACTIONS)
_OUTCOMES = frozenset(OUTCOMES)

Forward = Callable[[list[dict[str, Any]]], None]


class AuditUnavailable(RuntimeError):
    """The trail cannot take more records (its queue stayed full)."""


def _check(event: AuditEvent) -> None:
    if event.action not in _ACTIONS or event.outcome not in _OUTCOMES:
        row_of(event)  # raises the descriptive AuditError
    if event.action == "break-glass" and not event.reason.strip():
        raise AuditError("a break-glass event needs a reason")


def _utc(moment: datetime | None) -> datetime | None:
    if moment is None:
        return None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def append_rows(
    conn: Connection, rows: list[dict[str, Any]], *, anchor_every: int = 1000, anchor_seconds: float = 300.0
) -> list[dict[str, Any]]:
    """Append ``rows`` (from :func:`row_of`) to the chain in ``conn``'s
    transaction; returns the records as written (with seq, prev_hash, hash)."""
    head = conn.execute(
        update(audit_head)
        .where(audit_head.c.id == 1)
        .values(seq=audit_head.c.seq)  # lock the head first: serialises appenders
        .returning(audit_head.c.seq, audit_head.c.hash, audit_head.c.anchor_seq, audit_head.c.anchor_time)
    ).first()
    if head is None:  # a database migrated without the head row
        conn.execute(insert(audit_head).values(id=1, seq=0, hash=GENESIS_HASH, anchor_seq=0))
        return append_rows(conn, rows, anchor_every=anchor_every, anchor_seconds=anchor_seconds)
    seq, prev = int(head.seq), head.hash
    records = []
    for row in rows:
        seq += 1
        record = {**row, "seq": seq, "prev_hash": prev}
        record["hash"] = prev = chain_hash(prev, record)
        records.append(record)
    now = datetime.now(UTC)
    values: dict[str, Any] = {"seq": seq, "hash": prev}
    if records:
        conn.execute(insert(audit_events), records)
        keys = [{"seq": r["seq"], "patient_key": k} for r in records for k in patient_keys_of(r)]
        if keys:
            conn.execute(insert(audit_patients), keys)
    last_anchor = _utc(head.anchor_time)
    due = seq - int(head.anchor_seq) >= anchor_every or (
        seq > int(head.anchor_seq) and (last_anchor is None or (now - last_anchor).total_seconds() >= anchor_seconds)
    )
    if due and seq > 0:
        conn.execute(insert(audit_anchors).values(seq=seq, hash=prev, time=now))
        values.update(anchor_seq=seq, anchor_time=now)
    conn.execute(update(audit_head).where(audit_head.c.id == 1).values(**values))
    return records


class AuditTrail:
    """The audit trail of one process (see the module docstring)."""

    def __init__(
        self,
        engine: Engine,
        *,
        anchor_every: int = 1000,
        anchor_seconds: float = 300.0,
        queue_size: int = 100_000,
        batch_size: int = 1000,
        linger_seconds: float = 0.25,
        block_seconds: float = 30.0,
        forward: Forward | None = None,
    ) -> None:
        self.engine = engine
        self.anchor_every = max(1, anchor_every)
        self.anchor_seconds = anchor_seconds
        self.batch_size = max(1, batch_size)
        self.linger_seconds = max(0.0, linger_seconds)
        self.block_seconds = block_seconds
        self.forward = forward
        self.appended = 0  # records this process committed
        self.batches = 0
        self._queue: queue.Queue[AuditEvent | None] = queue.Queue(maxsize=queue_size)
        self._pending = 0
        self._done = threading.Condition()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._closed = False

    @classmethod
    def from_settings(cls, engine: Engine, settings: Any, *, forward: Forward | None = None) -> AuditTrail:
        """A trail configured by ``settings.audit`` (samarkiv/audit/config.py)."""
        from .config import audit_settings

        cfg = audit_settings(settings)
        return cls(
            engine, anchor_every=cfg.anchor_every, anchor_seconds=cfg.anchor_seconds,
            queue_size=cfg.queue_size, batch_size=cfg.batch_size,
            linger_seconds=cfg.linger_seconds, forward=forward,
        )  # fmt: skip

    # --- the hot path -------------------------------------------------------------

    def record(self, event: AuditEvent) -> None:
        """Queue ``event`` for appending (raises AuditError for a malformed one)."""
        _check(event)
        if self._thread is None:
            self._start()
        with self._done:
            self._pending += 1
        try:
            self._queue.put(event, timeout=self.block_seconds)
        except queue.Full:
            self._finished(1)
            raise AuditUnavailable(f"the audit queue stayed full for {self.block_seconds:g} s") from None

    def record_in(self, conn: Connection, events: Iterable[AuditEvent]) -> list[int]:
        """Append ``events`` in ``conn``'s transaction; returns their seqs.
        They are forwarded (syslog) once that transaction commits."""
        rows = [row_of(e) for e in events]
        records = append_rows(conn, rows, anchor_every=self.anchor_every, anchor_seconds=self.anchor_seconds)
        if self.forward is not None and records:
            self._forward_on_commit(conn, records)
        return [r["seq"] for r in records]

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every recorded event is committed; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._done:
            while self._pending:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._done.wait(left)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Flush, anchor the head, and stop the writer thread."""
        if self._closed:
            return
        self._closed = True
        thread = self._thread
        if thread is not None:
            self.flush(timeout)
            self._queue.put(None)
            thread.join(timeout)

    # --- the writer thread -----------------------------------------------------------

    def _start(self) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="audit-writer", daemon=True)
                self._thread.start()
                atexit.register(self.close)

    def _finished(self, n: int) -> None:
        with self._done:
            self._pending -= n
            if self._pending <= 0:
                self._done.notify_all()

    def _run(self) -> None:
        stop = False
        while not stop:
            try:
                first = self._queue.get(timeout=max(self.anchor_seconds, 0.05))
            except queue.Empty:
                self._append_with_retry([])  # a time-based anchor, when due
                continue
            if first is None:
                break
            batch = [first]
            gathered_until = time.monotonic() + self.linger_seconds
            while len(batch) < self.batch_size:
                try:
                    item = self._queue.get(timeout=max(0.0, gathered_until - time.monotonic()))
                except queue.Empty:
                    break
                if item is None:
                    stop = True
                    break
                batch.append(item)
            rows = []
            for event in batch:
                try:
                    rows.append(row_of(event))
                except AuditError as exc:  # record() checked it; changed after?
                    log.error("audit event dropped as malformed: %s", exc)
            try:
                self._append_with_retry(rows)
            finally:
                self._finished(len(batch))
        self._append_with_retry([])

    def _append_with_retry(self, rows: list[dict[str, Any]]) -> None:
        delay = 0.1
        while True:
            try:
                with self.engine.begin() as conn:
                    records = append_rows(
                        conn, rows, anchor_every=self.anchor_every, anchor_seconds=self.anchor_seconds
                    )
                break
            except SQLAlchemyError as exc:
                if not rows:
                    return  # only an anchor: try again next time
                log.error("audit append failed, retrying in %.1f s: %s", delay, str(exc).splitlines()[0])
                time.sleep(delay)
                delay = min(delay * 2, 5.0)
        if rows:
            self.appended += len(records)
            self.batches += 1
            if self.forward is not None:
                self._call_forward(records)

    def _call_forward(self, records: list[dict[str, Any]]) -> None:
        try:
            self.forward(records)  # type: ignore[misc]
        except Exception:  # noqa: BLE001  (the chain is committed; a collector problem is only logged)
            log.exception("audit forwarding failed")

    def _forward_on_commit(self, conn: Connection, records: list[dict[str, Any]]) -> None:
        from sqlalchemy import event

        event.listen(conn, "commit", lambda _conn: self._call_forward(records), once=True)


def head_of(conn: Connection) -> Mapping[str, Any] | None:
    """The chain's head row (seq, hash, anchor_seq, anchor_time)."""
    row = conn.execute(select(audit_head).where(audit_head.c.id == 1)).first()
    return None if row is None else row._mapping
